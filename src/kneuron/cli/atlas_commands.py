"""Commands that write and read an atlas: run, atlas, export."""

from __future__ import annotations

from pathlib import Path
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
    RunOption,
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
    parse_relations,
    parse_share,
    path_value,
)
from kneuron.errors import KneuronError
from kneuron.facts.sources import sources_help
from kneuron.studies.display import fit_table
from kneuron.studies.intervals import count_interval, format_interval


@command("run")
def run_command(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="The atlas to write, e.g. runs/NAME.sqlite. An atlas of the same model and parameters "
                            "there is continued (a killed run resumes where it stopped).",
        show_default=False, parser=path_value)],
    model: ModelOption = None,
    facts: Annotated[str, typer.Option("--facts", help=sources_help())] = "builtin",
    relations: Annotated[str | None, typer.Option(help="Comma-separated relations to keep.", show_default=False)
                         ] = None,
    language: LanguageOption = None,
    min_languages: Annotated[int | None, typer.Option(
        "--min-languages", min=2, show_default=False,
        help="Multilingual facts: keep only the facts the model knows in at least N languages (each in the "
             "languages it knows), as `kneuron study languages` compares them.")] = None,
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
    executor: Annotated[str, typer.Option("--executor", help="local (this process) or ray (actors that each load "
                                                             "--model; needs kneuron[ray]).")] = "local",
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster to join (host:port, "
                                                    "ray://host:port, auto); default: start a local Ray.",
                                                    show_default=False)] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Ray workers (each loads the model once).")] = 2,
    stall_timeout: Annotated[float | None, typer.Option(
        "--stall-timeout", min=0.001, help="--executor ray: end the run (resumable) when no chunk has come back for "
                                           "this many seconds [default: 600].", show_default=False)] = None,
    gpus_per_worker: Annotated[float, typer.Option("--gpus-per-worker", min=0.0, help="GPUs Ray reserves per "
                                                   "worker (fractions allowed); > 0 puts workers on cuda.")] = 0.0,
    chunk_facts: Annotated[int, typer.Option("--chunk-facts", min=1, help="Facts per chunk: their same-shape "
                                             "prompts share batches (part of the atlas's parameters).")] = 16,
    keep_scores: Annotated[str, typer.Option("--keep-scores", help="Score matrices to keep per prompt: sparse "
                                             "(scores >= 0.05 x the prompt's max; 15x smaller), full or none.")
                         ] = "sparse",
    estimator: EstimatorOption = "ig",
    alphas: AlphasOption = "right",
    screen: ScreenOption = None,
    norm: NormOption = None,
) -> None:
    """Find the knowledge neurons of every fact of a set and store everything in an atlas (resumable)."""
    import contextlib

    from kneuron.facts import load_facts, select_languages, validate_facts
    from kneuron.store import Atlas
    from kneuron.store import run as run_facts

    chosen = parse_relations(relations)
    chosen_estimator = parse_estimator(estimator, screen, steps=steps, objective=objective, alphas=alphas, norm=norm,
                                       threshold=threshold, share=share,
                                       given=given_options(ctx, "steps", "alphas", "objective"))
    # a malformed file, a missing relation or an empty set fails here, before the model loads or anything is written
    loaded = load_facts(facts)
    if language is not None:
        loaded = select_languages(loaded, language, source=facts)
    loaded = validate_facts(loaded, causal=False, relations=chosen, source=facts)
    lm = load_model(model, device)
    loaded = validate_facts(loaded, causal=lm.kind == "causal", source=facts)  # the same checks as `kneuron facts`
    if min_languages is not None:
        from kneuron.facts import known_facts
        from kneuron.facts.languages import fact_key, in_several_languages

        with err_console.status(f"Ranking the answers of {len(loaded)} facts ..."):
            known, _ = known_facts(lm, loaded, top=top)
        kept = in_several_languages(known, min_languages)
        err_console.print(f"{len(kept)} of {len(loaded)} facts kept: the model knows them in at least {min_languages} "
                          f"languages ({len({fact_key(f) for f in kept})} facts).", highlight=False)
        if not kept:
            raise KneuronError(f"{lm.name} knows none of these facts in {min_languages} languages or more: lower "
                               "--min-languages, or choose other languages or facts.")
        loaded = kept
    from kneuron.parallel import make_executor

    chosen_executor = make_executor(executor, lm, model=model, address=ray_address, workers=workers,
                                    gpus_per_worker=gpus_per_worker, device=device, stall_timeout=stall_timeout)
    try:
        summary = run_facts(lm, loaded, out, steps=steps, threshold=threshold, share=parse_share(share),
                            objective=objective, alphas=alphas, estimator=chosen_estimator,
                            known_only=not all_facts, top=top,
                            limit_per_relation=per_relation, overwrite=overwrite, console=err_console,
                            executor=chosen_executor, chunk_facts=chunk_facts, keep_scores=keep_scores)
    except KeyboardInterrupt:
        done = 0
        with contextlib.suppress(KneuronError), Atlas.open(out, read_only=True) as atlas:
            done = len(atlas.facts())
        if not out.exists():  # a run stopped before its first fact removes the atlas it created
            err_console.print(Text(f"interrupted before the first fact: nothing was stored, and {out} was not "
                                   "kept.", style="yellow"), soft_wrap=True)
            raise typer.Exit(code=130) from None
        err_console.print(f"[yellow]interrupted: {done} facts are stored in {out}; run the same command again to "
                          "continue.[/yellow]", highlight=False)
        raise typer.Exit(code=130) from None
    with Atlas.open(out, read_only=True) as atlas, atlas.snapshot():
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

    with Atlas.open(run, read_only=True) as atlas, atlas.snapshot():  # one moment, also while a run writes
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


def describe_estimator(params: dict) -> str:
    """The estimator an atlas's params record, in words (an atlas made before estimators: exact IG)."""
    from kneuron.store.atlas import param

    name = param(params, "estimator")
    if name != "ig":
        return f"{name} (objective {params.get('objective', 'prob')})"
    text = f"ig (exact integrated gradients, {params.get('steps')} steps, alphas {params.get('alphas', 'right')})"
    if param(params, "screen"):
        text += f", screened to each fact's {params['screen']} best layers by {params.get('screen_estimator')}"
    return text


def neurons_per_fact(refined: dict, ids: list[str]) -> str:
    """The mean number of refined neurons per done fact of ``ids`` with its 95% interval (the seeded bootstrap over
    facts, :func:`~kneuron.studies.intervals.count_interval`) and n; empty without done facts. Computed here: an
    atlas's neurons are not a study's rows, so no aggregate of them is stored."""
    if not ids:
        return ""
    return format_interval(count_interval([len(refined.get(i, ())) for i in ids]))


def _show_atlas(atlas, relation: str | None, top: int) -> None:
    meta = atlas.meta
    params = meta.get("params", {})
    console.print(Text(f"{atlas.path}: {meta.get('model')} ({meta.get('family')}, {meta.get('kind')}, "
                       f"{meta.get('n_layers')} layers x {meta.get('n_neurons')} neurons)", style="bold"),
                  soft_wrap=True)
    console.print(Text(f"estimator: {describe_estimator(params)}", style="bold"), soft_wrap=True)
    console.print(Text(", ".join(f"{k}={v}" for k, v in params.items()) + f"; made {meta.get('created')} by "
                       f"kneuron {meta.get('kneuron_version')}", style="dim"), soft_wrap=True)
    refined = atlas.all_refined()
    totals = [0, 0, 0, 0]
    lines = []
    for name, counts in atlas.status_counts().items():
        if relation is not None and name != relation:
            continue
        values = [counts[s] for s in ("done", "pending", "dropped", "invalid")]
        totals = [a + b for a, b in zip(totals, values, strict=True)]
        lines.append([name, *map(str, values), neurons_per_fact(refined, [f.id for f in atlas.facts(relation=name)])])
    if relation is None:
        lines.append(["all", *map(str, totals), neurons_per_fact(refined, list(refined))])
    facts = fit_table("", ["relation", "done", "pending", "dropped", "invalid", "neurons/fact"],
                      lines, console.width,
                      caption="neurons/fact: refined neurons, mean over the done facts [95% interval: bootstrap over "
                              "facts], n facts")
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
    best.add_column("mean score [95%], n", justify="right")
    for neuron, count, score in atlas.top_neuron_intervals(top, relation=relation):
        best.add_row(str(neuron), str(count), f"{count / done:.0%}", format_interval(score, significant=4))
    _titled("Top neurons (shared by the most facts)", best)
    console.print(Text("mean score: the neuron's refined score over the facts it is a knowledge neuron of [95% "
                       "interval: bootstrap over those facts], n facts", style="dim"))
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

    row = atlas.fact_row(fact_id)
    if row is None:
        known = [f.id for f in atlas.facts(status=None)][:8]
        raise KneuronError(f"No fact {fact_id!r} in {atlas.path}; facts are named like {', '.join(known)} ...")
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
    from kneuron.cli.consistency_study import fact_consistency_line

    console.print(fact_consistency_line(atlas, fact_id), soft_wrap=True)
    _titled(f"Knowledge neurons (share used {json.dumps(kn.params.get('share_used'))})", neuron_table(kn))
    if not kn.neurons:
        console.print("[yellow]No neuron is shared by enough of its prompts.[/yellow]")
    from kneuron.cli.vocabulary_study import show_fact_vocabulary

    show_fact_vocabulary(atlas, fact_id, kn.neurons)
    if kn.params.get("screen_layers") is not None:
        console.print(Text(f"Screened: integrated gradients ran in layers {kn.params['screen_layers'] or 'none'}",
                           style="dim"), soft_wrap=True)
    baseline = atlas.baseline_neurons(fact_id)
    if baseline:
        console.print(Text("Activation baseline: " + ", ".join(f"{n} ({n.score:.3g})" for n in baseline),
                           style="dim"), soft_wrap=True)


@command("export")
def export_command(
    run: RunOption,
    to: Annotated[Path, typer.Option("--to", help="out.csv or out.parquet: the neurons table there, the facts, "
                                                  "prompts, generic and results tables beside it "
                                                  "(out.facts.csv, ...).",
        show_default=False, parser=path_value)],
) -> None:
    """Export an atlas's tables to CSV or Parquet."""
    from kneuron.store import export

    for path in export(run, to):
        console.print(str(path), highlight=False, soft_wrap=True)
