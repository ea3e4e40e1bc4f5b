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
from kneuron.studies.consistency import (
    COMPARED_STUDIES,
    STUDY,
    consistency_study,
    effect_comparisons,
    missing_studies,
    relation_names,
    split_lines,
    split_rows,
    summary_values,
)
from kneuron.studies.display import fit_table, stored_figure
from kneuron.studies.intervals import aggregate_rows
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

    def aggregates(self, output: StudyOutput, context: StudyContext) -> list[dict]:
        """The per-fact measures' aggregates, and those of the other studies' figures on the consistent and on the
        inconsistent facts (:func:`~kneuron.studies.consistency.split_rows`), each with its interval and n."""
        with context.atlas.snapshot():
            others = {study: context.atlas.results(study) for study in COMPARED_STUDIES}
        return aggregate_rows([*output.rows, *split_rows(output.rows, others)])

    def measures(self, rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str]]:
        return []

    def summary(self, output: StudyOutput, context: StudyContext) -> list:
        with context.atlas.snapshot():
            others = {study: context.atlas.results(study) for study in COMPARED_STUDIES}
        return consistency_tables(output.rows, context.run_path, others, output.aggregates, context.width)


def consistency_tables(rows: Sequence[dict], run: Path | str, others: dict[str, Sequence[dict]] | None = None,
                       aggregates: Sequence[dict] = (), width: int | None = None) -> list[Table | Text]:
    """The summary: per relation and overall (facts, mean Jaccard, mean rank correlation, share of consistent
    facts, each with its stored interval and n), the Otsu threshold, and the other studies' figures on consistent
    against inconsistent facts (each class's mean with its stored interval and n); one figure per line on a
    terminal too narrow for a table (``width``)."""
    overall, otsu = summary_values(rows), summary_values(rows, "otsu")
    parts: list[Table | Text] = []
    lines = []
    for relation in [*relation_names(rows), ""]:
        values = overall if not relation else summary_values(rows, "relation", relation)
        lines.append([relation or "all facts", f"{values.get('facts', 0):.0f}",
                      *(stored_figure(aggregates, rows, STUDY, "fact", metric, relation, percent=percent,
                                      signed=False)
                        for metric, percent in (("jaccard", False), ("rank_correlation", False),
                                                ("consistent", True)))])
    parts.append(fit_table(f"Consistency of {overall.get('facts', 0):.0f} facts across their prompts, stored in "
                           f"{run}", ["relation", "facts", "Jaccard", "rank corr", "consistent"], lines, width,
                           caption="means over facts [95% interval: bootstrap over facts; Wilson's for a share of "
                                   "facts], n facts; no control"))
    if math.isfinite(otsu.get("threshold", math.nan)):
        parts.append(Text(f"Otsu threshold on the Jaccard (the consistency score): {otsu['threshold']:.3f} over "
                          f"{otsu.get('facts', 0):.0f} facts; consistent = above it; "
                          f"{overall.get('inconsistent', 0):.0f} inconsistent", style="dim"))
    else:
        parts.append(Text(f"no Otsu split: {otsu.get('facts', 0):.0f} fact(s) with a finite Jaccard, all equal or "
                          "fewer than 2", style="yellow"))
    if others is not None:
        comparisons = effect_comparisons(rows, others)
        if comparisons:
            parts.append(fit_table("Other studies' figures on consistent and inconsistent facts",
                                   ["measure", "consistent", "inconsistent"], split_lines(rows, comparisons,
                                                                                          aggregates), width))
        for study_name, hint in missing_studies(comparisons, run):
            parts.append(Text(f"no {study_name} rows yet: run `{hint}`", style="dim"))
    return parts
