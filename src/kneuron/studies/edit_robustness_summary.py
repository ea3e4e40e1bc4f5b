"""Summaries of the edit-robustness study's rows (:mod:`kneuron.studies.edit_robustness`): per variant, every
metric's mean over the facts, the prompt sets' table (P(new) > P(old), top-1 = new, P(new) rose, top-1 became new)
and the other tests, each mean with its stored interval and n as the CLI and the report show them, and a
plain-text rendering."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from kneuron.studies.edit_robustness import STUDY


def robustness_variants(rows: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(r["variant"] for r in rows if r["metric"] == "edited"))


def robustness_summary(rows: Sequence[dict], variant: str) -> dict[str, float]:
    """Every metric's mean over the facts that have it (NaN where none does), plus ``facts`` (updated or not),
    ``edited`` and, per test, how many facts it covered (``<metric>_facts``)."""
    mine = [r for r in rows if r["variant"] == variant and r.get("fact_id")]
    values: dict[str, list[float]] = {}
    for r in mine:
        if isinstance(r["value"], float) and math.isfinite(r["value"]):
            values.setdefault(r["metric"], []).append(r["value"])
    out = {metric: float(np.mean(v)) for metric, v in values.items()}
    out |= {f"{metric}_facts": float(len(v)) for metric, v in values.items()}
    edited = values.get("edited", [])
    out["facts"], out["edited"] = float(len({r["fact_id"] for r in mine})), float(sum(edited))
    return out


#: (label, prompt set, its prefix) of the summary table: P(new) > P(old), top-1 new, P(new) rose, top-1 became new
TABLE_SETS = (("own prompts", "own"), ("aliases of the subject", "alias"), ("kept paraphrases", "kept"),
              ("held-out paraphrases", "heldout"), ("held-out, all-prompt neurons", "heldout_full"))


def summary_table(rows: Sequence[dict], variant: str) -> list[tuple[str, float, float, float, float, float]]:
    """(set label, facts, P(new) > P(old), top-1 = new, P(new) rose, top-1 became new) per prompt set that has
    rows, then the reverse query of the new answer (target: the edited subject)."""
    s = robustness_summary(rows, variant)
    get = s.get
    table = []
    for label, prefix in TABLE_SETS:
        if get(f"{prefix}_new_beats_old_facts"):
            table.append((label, get(f"{prefix}_new_beats_old_facts"), get(f"{prefix}_new_beats_old"),
                          get(f"{prefix}_top1_new"), get(f"{prefix}_p_rose"), get(f"{prefix}_top1_became")))
    if get("reverse_new_top1_after_facts"):
        table.append(("reverse: t' → subject", get("reverse_new_top1_after_facts"),
                      get("reverse_new_beats_owner", math.nan), get("reverse_new_top1_after"),
                      get("reverse_new_p_rose"), get("reverse_new_top1_became")))
    return table


#: the prompt-set table's measures: (column, metric suffix; the reverse row's metric)
SET_MEASURES = (("P(new) > P(old)", "new_beats_old", "reverse_new_beats_owner"),
                ("top-1 = new", "top1_new", "reverse_new_top1_after"),
                ("P(new) rose", "p_rose", "reverse_new_p_rose"),
                ("top-1 became new", "top1_became", "reverse_new_top1_became"))


def set_figures(rows: Sequence[dict], variant: str, aggregates: Sequence[dict] = ()) -> list[list[str]]:
    """The prompt-set table as text, ``[set label, cell per measure of SET_MEASURES]``: each cell the mean over
    the facts with its stored 95% interval and n (no control: no p;
    :func:`~kneuron.studies.display.stored_figure`), for the sets :func:`summary_table` lists."""
    from kneuron.studies.display import stored_figure

    prefixes = dict(TABLE_SETS)
    out = []
    for label, *_ in summary_table(rows, variant):
        metrics = ([reverse for _, _, reverse in SET_MEASURES] if label not in prefixes else
                   [f"{prefixes[label]}_{suffix}" for _, suffix, _ in SET_MEASURES])
        out.append([label, *(stored_figure(aggregates, rows, STUDY, variant, metric, signed=False)
                             for metric in metrics)])
    return out


def detail_figures(rows: Sequence[dict], variant: str, aggregates: Sequence[dict] = ()) -> list[tuple[str, str]]:
    """The other tests' figures as ``(measure, text)``, each a stored mean over facts with its interval and n: the
    old reverse fact, the reverse query's probabilities, the neighbourhood and the recomputed refined sets
    (those the study measured)."""
    from kneuron.studies.display import stored_figure

    def shown(metric: str, percent: bool = True) -> str:
        return stored_figure(aggregates, rows, STUDY, variant, metric, percent=percent, signed=False)

    s = robustness_summary(rows, variant)
    out = []
    for label, metric, percent, covered in (
            ("old reverse fact: top-1 right before", "reverse_old_top1_before", True, "reverse_old_top1_before"),
            ("old reverse fact: top-1 right after", "reverse_old_top1_after", True, "reverse_old_top1_before"),
            ("old reverse fact: kept where right", "reverse_old_kept", True, "reverse_old_top1_before"),
            ("reverse of t': P(subject) before", "reverse_new_p_before", False, "reverse_new_p_before"),
            ("reverse of t': P(subject) after", "reverse_new_p_after", False, "reverse_new_p_before"),
            ("neighbourhood: own answer beats t', before", "neighborhood_before", True, "neighborhood"),
            ("neighbourhood: own answer beats t', after", "neighborhood", True, "neighborhood"),
            ("refined sets recomputed = the atlas's", "refined_equal", True, "refined_equal"),
            ("kept vs all-prompt neurons, Jaccard", "heldout_jaccard", False, "refined_equal")):
        if s.get(f"{covered}_facts"):
            out.append((label, shown(metric, percent)))
    return out


def format_summary(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> str:
    """A plain-text summary per variant: each prompt set's measures and the other tests', each mean with its
    stored interval and n (:func:`set_figures`, :func:`detail_figures`)."""
    lines = []
    for variant in robustness_variants(rows):
        s = robustness_summary(rows, variant)
        lines.append(f"{variant}: {s['edited']:.0f} of {s['facts']:.0f} facts updated")
        for label, *cells in set_figures(rows, variant, aggregates):
            lines.append(f"  {label}: " + "; ".join(f"{column} {cell}"
                                                   for (column, *_), cell in zip(SET_MEASURES, cells, strict=True)))
        lines += [f"  {label}: {text}" for label, text in detail_figures(rows, variant, aggregates)]
    return "\n".join(lines)
