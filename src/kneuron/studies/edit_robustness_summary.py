"""Summaries of the edit-robustness study's rows (:mod:`kneuron.studies.edit_robustness`): per variant, every
metric's mean over the facts, the prompt sets' table (P(new) > P(old), top-1 = new, P(new) rose, top-1 became new)
and a plain-text rendering; what the CLI and the report show."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


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


def percent(value: float | None) -> str:
    """``value`` as a whole percentage; a dash for None or NaN."""
    return f"{value:.0%}" if value is not None and math.isfinite(value) else "–"


def summary_lines(s: dict[str, float]) -> list[str]:
    """The sentences under a variant's table (from :func:`robustness_summary`): the old reverse fact, the
    neighbourhood and the recomputed refined sets, each when the study measured it."""
    lines = []
    if s.get("reverse_old_top1_before_facts"):
        lines.append(f"old reverse fact (\"Paris is the capital of\" → France): top-1 right "
                     f"{percent(s.get('reverse_old_top1_before'))} → {percent(s.get('reverse_old_top1_after'))}, "
                     f"kept on {percent(s.get('reverse_old_kept'))} of the prompts it was right on")
    if s.get("neighborhood_facts"):
        lines.append(f"neighbourhood (other subjects of the relation keep their answer over t'): "
                     f"{percent(s.get('neighborhood_before'))} → {percent(s.get('neighborhood'))} "
                     f"({s['neighborhood_facts']:.0f} facts)")
    if s.get("refined_equal_facts"):
        lines.append(f"refined sets recomputed from the stored coarse sets equal the atlas's for "
                     f"{percent(s.get('refined_equal'))} of {s['refined_equal_facts']:.0f} facts; neurons of the "
                     f"kept prompts vs all prompts: Jaccard {s.get('heldout_jaccard', math.nan):.2f}")
    return lines


def format_summary(rows: Sequence[dict]) -> str:
    """A plain-text summary per variant: the prompt sets' success and probability vs top-1, symmetry and the
    neighbourhood."""
    lines = []
    for variant in robustness_variants(rows):
        s = robustness_summary(rows, variant)
        lines.append(f"{variant}: {s['edited']:.0f} of {s['facts']:.0f} facts updated")
        lines.append(f"  {'prompt set':<46}{'facts':>6}{'P(new)>P(old)':>14}{'top1=new':>9}{'P(new) rose':>12}"
                     f"{'top1 became':>12}")
        for label, count, beats, top1, rose, became in summary_table(rows, variant):
            lines.append(f"  {label:<46}{count:>6.0f}{percent(beats):>14}{percent(top1):>9}{percent(rose):>12}"
                         f"{percent(became):>12}")
        lines += [f"  {line}" for line in summary_lines(s)]
    return "\n".join(lines)
