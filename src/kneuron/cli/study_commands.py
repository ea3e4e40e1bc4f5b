"""Commands that study an atlas and report on it: study, report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from kneuron.cli.app import (
    DeviceOption,
    ModelOption,
    RunOption,
    StudyArgument,
    atlas_model,
    command,
    console,
    err_console,
    require_done_facts,
)
from kneuron.errors import KneuronError


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
    seed: Annotated[int, typer.Option(help="Seeds the random control neurons, the other facts and the edit "
                                           "targets.")] = 0,
    estimators: Annotated[str | None, typer.Option(
        "--estimators", help="estimators only: the estimators to compare with IG, comma-separated: registered names "
                             "(gxa, ...), ig-gaussN (N-point Gauss–Legendre IG) or ig (exact IG measured again). "
                             "Default: every registered one but ig, and ig-gauss5.", show_default=False)] = None,
    facts_limit: Annotated[int | None, typer.Option(
        "--facts", min=1, help="estimators and interactions only: study the first N done facts (default: all).",
        show_default=False)] = None,
    cap: Annotated[int, typer.Option(
        "--cap", min=1, help="interactions only: each fact's best-scored neurons whose singles and pairs are "
                             "measured (8: up to 28 pairs).")] = 8,
    max_k: Annotated[int | None, typer.Option(
        "--max-k", min=1, help="interactions only: the longest cumulative curve (top-k neurons; default: all of the "
                               "fact's).", show_default=False)] = None,
    tolerance: Annotated[float, typer.Option(
        "--tolerance", min=0.0, help="interactions only: a pair whose Δ is within this of the sum of its neurons' "
                                     "is additive (in units of Δp/p).")] = 0.02,
    beyond: Annotated[str | None, typer.Option(
        "--beyond", help="all only: then these studies beyond the paper, on the same model load (comma-separated, "
                         "as beyond --only; e.g. consistency,vocabulary).", show_default=False)] = None,
    only: Annotated[str | None, typer.Option(
        "--only", help="beyond only: some of its studies, comma-separated (vocabulary, interactions, robustness, "
                       "consistency; "
                       "default: all of them).", show_default=False)] = None,
    device: DeviceOption = "cpu",
) -> None:
    """Run the paper's studies on an atlas's facts and neurons and store their results in it.

    [b]estimators[/b] compares cheaper attribution estimators with the atlas's exact integrated gradients (rank
    correlation, top-10 recall, refined neurons, suppression, seconds per prompt). It recomputes attributions,
    so it is not part of [b]all[/b]; it needs an atlas computed with exact IG (full or sparse scores).

    [b]languages[/b] compares the knowledge neurons of one fact across its languages (ids such as
    capital:France@fr, e.g. `kneuron run --facts multilingual`): neurons shared by all languages or specific to one,
    their layers, suppressing one language's neurons measured in every language, and an update through the English
    neurons measured in every language. [b]all[/b] includes it when the atlas has a fact done in two languages.

    [b]vocabulary[/b] projects each knowledge neuron's value slot onto the vocabulary (Geva et al. 2022), with the
    sign of its activation: does it promote the fact's answer (top 10 / 100), against random neurons of the same
    layers? Stores the top tokens per neuron (`kneuron atlas --fact` shows them); not part of [b]all[/b].

    [b]interactions[/b] suppresses each fact's knowledge neurons alone, in pairs (synergy or redundancy) and all
    together, and counts the top-k neurons it takes to remove 50% / 90% of the answer's probability against random
    neurons of the same layers (not part of [b]all[/b]).

    [b]consistency[/b] (no model needed) scores how consistent each fact's attributions are across its prompts
    (mean pairwise Jaccard of the coarse sets, mean pairwise rank correlation of the scores) and splits the facts
    into consistent and inconsistent by an Otsu threshold on the Jaccard (Chen et al., ICLR 2025).

    [b]beyond[/b] runs vocabulary, interactions, robustness and consistency (the studies beyond the paper) on one model
    load,
    or those ``--only`` names.

    [b]robustness[/b] tests edits as Niu et al. (ICLR 2024) do: each fact is updated through its knowledge neurons
    and measured on the reversed relation (one-to-one relations), on its subject's aliases, on paraphrases held out
    when the neurons are refined again from the stored coarse sets, and on other subjects of the relation
    (CounterFact's neighbourhood), with probability and top-1 side by side. Not part of [b]all[/b].
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kneuron.store import Atlas
    from kneuron.studies import summarize
    from kneuron.studies.studies import run_studies, study_names

    if name == "estimators":
        from kneuron.cli.estimator_study import estimator_study

        estimator_study(run, model, device, estimators, facts_limit, seed)
        return
    if name == "beyond":
        from kneuron.cli.beyond_study import beyond_study

        beyond_study(run, model, device, only=only, seed=seed, cap=cap, max_k=max_k, tolerance=tolerance)
        return
    if name == "consistency":
        from kneuron.cli.consistency_study import consistency_command

        consistency_command(run)
        return
    if name == "languages":
        from kneuron.cli.language_study import language_study

        language_study(run, model, device, seed)
        return
    if name == "vocabulary":
        from kneuron.cli.vocabulary_study import vocabulary_study_command

        vocabulary_study_command(run, model, device, seed)
        return
    if name == "interactions":
        from kneuron.cli.interactions_study import interactions_command

        interactions_command(run, model, device, seed=seed, cap=cap, max_k=max_k, tolerance=tolerance,
                             facts_limit=facts_limit)
        return
    if name == "robustness":
        from kneuron.cli.robustness_study import robustness_study

        robustness_study(run, model, device, seed)
        return
    names = study_names(name)
    if beyond is not None:
        from kneuron.cli.beyond_study import beyond_names

        if name != "all":
            raise KneuronError(f"--beyond goes with `kneuron study all` (got {name!r}); or run "
                               f"`kneuron study beyond --only {beyond}`.")
        beyond_names(beyond)  # refused in one line before any study runs
    with Atlas.open(run) as atlas:
        require_done_facts(atlas, run)
        stale = generic_share is not None or not atlas.meta.get("generic")
        lm = atlas_model(atlas, model, device)
        if stale:
            atlas.update_generic(share=generic_share)  # flags the generic neurons in the atlas's generic table
        with atlas.snapshot():  # the facts and all their neurons of one moment, also while a run writes
            facts = atlas.facts()
            share = float(atlas.meta.get("generic", {}).get("share", 0.1))
            neurons = atlas.all_refined()
            baseline = {fact.id: atlas.baseline_neurons(fact.id) for fact in facts}
            coarse = ({fact.id: atlas.knowledge_neurons(fact.id).coarse for fact in facts}
                      if "generic" in names else None)
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
        covered = [fact.id for fact in facts]
        for stored, rows in results.items():
            atlas.write_results(stored, rows, facts=covered)  # with the facts they covered (see `kneuron report`)
        languages = None
        if name == "all":  # the cross-lingual study too, when the atlas has facts done in two languages
            from kneuron.cli.language_study import languages_in_all

            languages = languages_in_all(atlas, lm, seed)
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
    if languages:
        from kneuron.cli.language_study import print_language_summary

        print_language_summary(languages, run)
    if beyond is not None:
        from kneuron.cli.beyond_study import beyond_study

        beyond_study(run, model, device, only=beyond, seed=seed, cap=cap, max_k=max_k, tolerance=tolerance, lm=lm)


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
    for warning in data.warnings():
        err_console.print(Text(f"warning: {warning}", style="yellow"), soft_wrap=True)
    missing = [s for s, rows in data.results.items() if not rows]
    if missing:
        err_console.print(f"[yellow]no results yet for {', '.join(missing)}: `kneuron study all --run {run}`"
                          "[/yellow]", highlight=False)
    typer.echo(headline_line(path, data, signed_auc=not raw_auc))
