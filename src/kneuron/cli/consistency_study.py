"""``kneuron study consistency --run ATLAS``: how consistent each fact's attributions are across its prompts, and the
consistent / inconsistent split of Chen et al. (:mod:`kneuron.studies.consistency`), stored as the
``consistency`` study and printed as a short table; and the line ``kneuron atlas --fact`` shows for one fact."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table
from rich.text import Text

from kneuron.cli.app import console, err_console


def _num(value: float, spec: str) -> str:
    return f"{value:{spec}}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def consistency_command(run: Path) -> None:
    """Compute and store the study on the atlas at ``run`` (no model needed) and print its summary; a ``none``
    atlas gets one line saying why it has no rank correlation."""
    from kneuron.store import Atlas
    from kneuron.studies.consistency import COMPARED_STUDIES, consistency_study

    with Atlas.open(run) as atlas:
        rows = consistency_study(atlas)
        keep = atlas.params.get("keep_scores", "full")
        with atlas.snapshot():
            others = {study: atlas.results(study) for study in COMPARED_STUDIES}
    if keep == "none":
        err_console.print(Text(f"rank correlation: not available: {run} keeps no score matrices (--keep-scores none); "
                               "re-run with --keep-scores sparse or full. The consistency score (Jaccard of the "
                               "coarse sets) is computed from the neurons table.", style="yellow"), soft_wrap=True)
    print_consistency_summary(rows, run, others)


def consistency_tables(rows: Sequence[dict], run: Path | str, others: dict[str, Sequence[dict]] | None = None
                       ) -> list[Table | Text]:
    """The summary: per relation and overall (facts, mean Jaccard, mean rank correlation, inconsistent), the Otsu
    threshold, and the other studies' figures on consistent against inconsistent facts."""
    from kneuron.studies.consistency import effect_comparisons, missing_studies, relation_names, summary_values

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


def print_consistency_summary(rows: Sequence[dict], run: Path | str,
                              others: dict[str, Sequence[dict]] | None = None) -> None:
    for part in consistency_tables(rows, run, others):
        console.print(part, soft_wrap=isinstance(part, Text))


def fact_consistency_line(atlas, fact_id: str) -> Text:
    """For ``kneuron atlas --fact``: the fact's consistency line from the stored study, or a hint to run it."""
    from kneuron.studies.consistency import STUDY, fact_values, summary_values

    rows = atlas.results(STUDY)
    hint = f"`kneuron study consistency --run {atlas.path}`"
    if not rows:
        return Text(f"consistency: not computed yet ({hint})", style="dim")
    values = fact_values(rows).get(fact_id)
    if values is None:
        return Text(f"consistency: this fact was not done when the study ran; run {hint} again", style="dim")
    otsu = summary_values(rows, "otsu")
    flag = values.get("consistent", math.nan)
    verdict = ("consistent" if flag == 1.0 else "inconsistent" if flag == 0.0 else "not classed")
    where = (f"Otsu threshold {otsu['threshold']:.2f} over {otsu.get('facts', 0):.0f} facts"
             if math.isfinite(otsu.get("threshold", math.nan)) else "no Otsu split")
    return Text(f"consistency: Jaccard {_num(values.get('jaccard', math.nan), '.2f')}, rank corr "
                f"{_num(values.get('rank_correlation', math.nan), '.2f')}, {verdict} ({where})",
                style="bold" if flag == 0.0 else "")
