"""``consistency``: how consistent each fact's attributions are across its prompts (mean pairwise Jaccard of the
coarse sets, mean pairwise rank correlation of the scores) and the consistent / inconsistent split by an Otsu
threshold on the Jaccard (Chen et al., ICLR 2025; :mod:`kneuron.studies.consistency`). No model needed; it compares
the other studies' per-fact figures on consistent and inconsistent facts, so it runs after them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table
from rich.text import Text

from kneuron.studies.base import Study, StudyContext, StudyOutput
from kneuron.studies.base import number as _num
from kneuron.studies.consistency import (
    COMPARED_STUDIES,
    consistency_study,
    effect_comparisons,
    missing_studies,
    relation_names,
    summary_values,
)
from kneuron.studies.registry import register_study


@register_study
class Consistency(Study):
    """How consistent each fact's attributions are across its prompts (Jaccard of the coarse sets, rank
    correlation of the scores), and the other studies' figures on consistent against inconsistent facts.

    No control: the per-fact Jaccard and rank correlation are agreement between a fact's own prompts, with no
    paired chance-level measure computed on the same facts, so its aggregates carry n and an interval only."""

    name = "consistency"
    title = "Consistency across prompts"
    group = "beyond"
    needs_model = False
    reads = COMPARED_STUDIES

    def run(self, context: StudyContext) -> StudyOutput:
        rows = consistency_study(context.atlas, write=False)
        if context.atlas.params.get("keep_scores", "full") == "none":
            context.note(f"rank correlation: not available: {context.run_path} keeps no score matrices "
                         "(--keep-scores none); re-run with --keep-scores sparse or full. The consistency score "
                         "(Jaccard of the coarse sets) is computed from the neurons table.")
        return StudyOutput(rows)

    def measures(self, rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str]]:
        return []

    def summary(self, output: StudyOutput, context: StudyContext) -> list:
        with context.atlas.snapshot():
            others = {study: context.atlas.results(study) for study in COMPARED_STUDIES}
        return consistency_tables(output.rows, context.run_path, others)


def consistency_tables(rows: Sequence[dict], run: Path | str, others: dict[str, Sequence[dict]] | None = None
                       ) -> list[Table | Text]:
    """The summary: per relation and overall (facts, mean Jaccard, mean rank correlation, inconsistent), the Otsu
    threshold, and the other studies' figures on consistent against inconsistent facts."""
    overall, otsu = summary_values(rows), summary_values(rows, "otsu")
    parts: list[Table | Text] = [Text(f"Consistency of {overall.get('facts', 0):.0f} facts across their prompts, "
                                      f"stored in {run}", style="bold")]
    table = Table(show_edge=False)
    for column in ("relation", "facts", "Jaccard", "rank corr", "inconsistent"):
        table.add_column(column, justify="left" if column == "relation" else "right")

    def add(name: str, values: dict, **style) -> None:
        share = values.get("inconsistent_share", math.nan)
        table.add_row(name, f"{values.get('facts', 0):.0f}", _num(values.get("jaccard", math.nan), ".3f"),
                      _num(values.get("rank_correlation", math.nan), ".3f"),
                      f"{values.get('inconsistent', 0):.0f} ({_num(share, '.0%')})", **style)

    for relation in relation_names(rows):
        add(relation, summary_values(rows, "relation", relation))
    add("all", overall, style="bold")
    parts.append(table)
    if math.isfinite(otsu.get("threshold", math.nan)):
        parts.append(Text(f"Otsu threshold on the Jaccard (the consistency score): {otsu['threshold']:.3f} over "
                          f"{otsu.get('facts', 0):.0f} facts; consistent = above it", style="dim"))
    else:
        parts.append(Text(f"no Otsu split: {otsu.get('facts', 0):.0f} fact(s) with a finite Jaccard, all equal or "
                          "fewer than 2", style="yellow"))
    if others is not None:
        comparisons = effect_comparisons(rows, others)
        if comparisons:
            effects = Table(show_edge=False)
            for column in ("measure", "variant", "consistent", "inconsistent"):
                effects.add_column(column, justify="left" if column in ("measure", "variant") else "right")
            for _study, variant, label, split in comparisons:
                percent = "+.1%" if "Δp/p" in label else ".1%"
                effects.add_row(label, variant, *(f"{_num(split[k][0], percent)} (n={split[k][1]})"
                                                  for k in ("consistent", "inconsistent")))
            parts.append(effects)
        for study_name, hint in missing_studies(comparisons, run):
            parts.append(Text(f"no {study_name} rows yet: run `{hint}`", style="dim"))
    return parts
