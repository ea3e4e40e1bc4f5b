"""``kneuron study estimators --run ATLAS``: cheaper attribution estimators against the atlas's exact integrated
gradients (:mod:`kneuron.studies.estimator_agreement`), stored as the ``estimators`` study and printed as one
table."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from kneuron.cli.app import atlas_model, console, err_console
from kneuron.errors import KneuronError


class PerFact(Mapping):
    """A read-only mapping ``fact id -> read(fact id)`` that reads each value when asked (one fact's score
    matrices in memory at a time)."""

    def __init__(self, ids: Sequence[str], read: Callable[[str], Any]) -> None:
        self._ids, self._read = list(ids), read

    def __getitem__(self, fact_id: str) -> Any:
        if fact_id not in self._ids:
            raise KeyError(fact_id)
        return self._read(fact_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def parse_estimators(value: str | None) -> list[str]:
    """The comma-separated estimator names, or the default ones (order kept, repeats dropped)."""
    from kneuron.studies.estimator_agreement import default_estimators

    names = [name.strip() for name in value.split(",") if name.strip()] if value else default_estimators()
    if not names:
        raise KneuronError("--estimators names none: give e.g. --estimators gxa,ig-gauss5.")
    return list(dict.fromkeys(names))


def estimator_study(run: Path, model: str | None, device: str, estimators: str | None, facts_limit: int | None,
                    seed: int) -> None:
    """Compare the estimators with the atlas's IG on its first ``facts_limit`` done facts, store the rows under
    ``estimators`` and print the table."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kneuron.store import Atlas
    from kneuron.studies.estimator_agreement import (
        STUDY,
        estimator_agreement,
        estimator_for,
        estimator_label,
        exact_ig_refusal,
    )

    names = parse_estimators(estimators)
    with Atlas.open(run) as atlas:
        with atlas.snapshot():
            params = atlas.params
            facts = atlas.facts()
        why = exact_ig_refusal(params)
        if why:
            raise KneuronError(f"{run} cannot be the reference of the estimator study: {why}. Make one with exact "
                               f"integrated gradients (`kneuron run --out runs/IG.sqlite`, the default).")
        if not facts:
            raise KneuronError(f"{run} has no computed facts yet: run `kneuron run --out {run}` (or let it finish).")
        chosen = {estimator_label(name): estimator_for(name, params) for name in names}
        lm = atlas_model(atlas, model, device)
        facts = facts[:facts_limit] if facts_limit else facts
        ids = [fact.id for fact in facts]

        def skipped(label: str, exc: KneuronError) -> None:
            err_console.print(Text(f"skipped {label}: {exc}", style="yellow"), soft_wrap=True)

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with atlas.snapshot():  # the facts' scores and neurons of one moment, also while a run writes
            sparse = params.get("keep_scores", "full") == "sparse"
            refined = atlas.all_refined()
            seconds = {row["id"]: row["compute_seconds"] for row in atlas.fact_rows("done")}
            with Progress(*columns, console=err_console, transient=True) as progress:
                task = progress.add_task("estimators", total=len(facts))
                rows = estimator_agreement(
                    lm, facts, PerFact(ids, atlas.prompt_scores), {i: refined.get(i, []) for i in ids}, chosen,
                    threshold=float(params.get("threshold", 0.2)), share=params.get("share", "adaptive"),
                    kept=PerFact(ids, lambda i: atlas.prompt_sparse(i)[0][0]) if sparse else None,
                    ig_seconds={i: seconds[i] for i in ids if seconds.get(i) is not None}, seed=seed,
                    on_fact=lambda _fact: progress.advance(task), on_skip=skipped)
        atlas.write_results(STUDY, rows, facts=ids)
    console.print(agreement_table(rows, f"Estimators against exact IG on {len(facts)} facts, stored in {run}"))


def _num(value: float, spec: str) -> str:
    return f"{value:{spec}}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def agreement_table(rows: Sequence[dict], title: str) -> Table:
    """The study's summary (:func:`~kneuron.studies.estimator_agreement.agreement_summary`) as a rich table."""
    from kneuron.studies.estimator_agreement import agreement_summary

    table = Table(title=Text(title, style="bold"), title_justify="left", show_edge=False, caption_justify="left",
                  caption="Spearman per prompt over all neurons, or over the neurons a sparse atlas keeps; suppress: "
                          "mean Δp/p of the fact's prompts with the estimator's refined neurons, IG's, or as many "
                          "random ones of the same layers set to 0. s/prompt of ig (atlas): measured when the atlas "
                          "was made (compute_seconds / prompts); the others measured now.")
    for column in ("estimator", "facts", "spearman", "top-10 recall", "refined Jaccard", "suppress est",
                   "suppress IG", "suppress random", "s/prompt", "x faster"):
        table.add_column(column, justify="left" if column == "estimator" else "right")
    for entry in agreement_summary(rows):
        if entry["estimator"] == "ig":
            table.add_row("ig (atlas)", str(entry["facts"]), "", "", "", "", _num(entry["suppress"], "+.2%"),
                          _num(entry["suppress_random"], "+.2%"), _num(entry["seconds_per_prompt"], ".3f"), "1")
            continue
        over = "" if entry["spearman_over"] == "all" else f" ({entry['spearman_neurons']:.0f} kept)"
        table.add_row(str(entry["estimator"]), str(entry["facts"]), _num(entry["spearman"], ".3f") + over,
                      _num(entry["top_recall"], ".2f"), _num(entry["refined_jaccard"], ".2f"),
                      _num(entry["suppress"], "+.2%"), _num(entry["suppress_ig"], "+.2%"),
                      _num(entry["suppress_random"], "+.2%"), _num(entry["seconds_per_prompt"], ".3f"),
                      _num(entry["speedup"], ".1f"))
    return table
