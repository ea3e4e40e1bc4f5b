"""Summaries of the edit-methods study's rows (:mod:`kneuron.studies.edit_methods`): one table of every metric
per method (means over the facts with a bootstrap 95% interval, the paper's ΔPPL), and Hase et al.'s check (does
the tracing effect at the edit layer predict ROME's success per fact? Spearman over facts); what the CLI and the
report show."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from kneuron.studies.editing import update_summary

#: (label, metric) of the comparison table's rows: means over the edited facts of a per-fact share or probability
TABLE = (
    ("update: top-1 = new (own prompts)", "own_top1_new"),
    ("update: P(new) > P(old) (own prompts)", "own_new_beats_old"),
    ("P(new) on own prompts, after", "own_p_new_after"),
    ("paraphrases held out: top-1 = new", "heldout_top1_new"),
    ("paraphrases held out: P(new) > P(old)", "heldout_new_beats_old"),
    ("aliases of the subject: top-1 = new", "alias_top1_new"),
    ("aliases of the subject: P(new) > P(old)", "alias_new_beats_old"),
    ("reverse: new answer's prompts give the subject (top-1)", "reverse_new_top1_after"),
    ("reverse: P(subject) > P(new answer's own subject)", "reverse_new_beats_owner"),
    ("reverse: old answer's prompts still give the subject", "reverse_old_kept"),
    ("neighbourhood: own answer beats new, before", "neighborhood_before"),
    ("neighbourhood: own answer beats new, after", "neighborhood"),
    ("same relation, other facts: top-1 kept", "intra_top1_kept"),
    ("other relations: top-1 kept", "inter_top1_kept"),
)
#: the paper's ΔPPL rows: (label, tag)
PPL = (("ΔPPL, same relation (paper's)", "intra"), ("ΔPPL, other relations (paper's)", "inter"))
#: what ROME's per-fact success is measured by in Hase et al.'s check: (label, metric, computed from)
SUCCESS = (("rise of P(new) on own prompts", "own_p_new_after", "own_p_new_before"),
           ("P(new) > P(old) on own prompts", "own_new_beats_old", None),
           ("P(new) > P(old) on held-out paraphrases", "heldout_new_beats_old", None))


def methods_of(rows: Sequence[dict]) -> list[str]:
    """The edit variants in the rows, in order (kn, kn_signed, rome, rome_c...)."""
    return list(dict.fromkeys(r["variant"] for r in rows if r["metric"] == "edited"))


def per_fact(rows: Sequence[dict], variant: str, metric: str) -> dict[str, float]:
    return {r["fact_id"]: r["value"] for r in rows if r["variant"] == variant and r["metric"] == metric
            and r.get("fact_id") and isinstance(r["value"], float) and math.isfinite(r["value"])}


def mean_interval(values: Sequence[float], seed: int = 0) -> tuple[float, float, float, int]:
    """(mean, low, high, n): a percentile bootstrap 95% interval of the mean (scipy), the mean itself when every
    value is equal or there is one."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return math.nan, math.nan, math.nan, 0
    mean = float(v.mean())
    if len(v) < 2 or np.ptp(v) == 0:
        return mean, mean, mean, len(v)
    ci = stats.bootstrap((v,), np.mean, n_resamples=2000, confidence_level=0.95, method="percentile",
                         random_state=np.random.default_rng(seed)).confidence_interval
    return mean, float(ci.low), float(ci.high), len(v)


def comparison(rows: Sequence[dict]) -> list[tuple[str, dict[str, tuple[float, float, float, int]]]]:
    """Per table row, per method: (mean, low, high, facts); ΔPPL rows have no interval (NaN bounds)."""
    methods = methods_of(rows)
    edited = {m: sum(per_fact(rows, m, "edited").values()) for m in methods}
    out: list[tuple[str, dict]] = [("facts edited", {m: (edited[m], math.nan, math.nan,
                                                          len(per_fact(rows, m, "edited"))) for m in methods})]
    for label, metric in TABLE:
        out.append((label, {m: mean_interval(list(per_fact(rows, m, metric).values())) for m in methods}))
    for label, tag in PPL:
        cells = {}
        for m in methods:
            s = update_summary(rows, m)
            cells[m] = (s[f"{tag}_delta_ppl"], math.nan, math.nan, len(per_fact(rows, m, f"{tag}_log_ppl_after")))
        out.append((label, cells))
    return out


def localisation_correlations(rows: Sequence[dict], variant: str = "rome",
                              effects: Sequence[str] = ("at_edit_layer", "at_edit_layer_alone"),
                              ) -> list[tuple[str, str, float, float, int]]:
    """Hase et al.'s check: (tracing effect, success measure, Spearman ρ, two-sided p, facts) over the facts with
    both; NaN where fewer than 3 facts or a constant side."""
    out = []
    for effect in effects:
        traced = per_fact(rows, "tracing", effect)
        for label, metric, base in SUCCESS:
            after = per_fact(rows, variant, metric)
            before = per_fact(rows, variant, base) if base else {}
            success = {f: after[f] - before[f] if base else after[f] for f in after if not base or f in before}
            common = sorted(set(traced) & set(success))
            x, y = [traced[f] for f in common], [success[f] for f in common]
            if len(common) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
                out.append((effect, label, math.nan, math.nan, len(common)))
                continue
            result = stats.spearmanr(x, y)
            out.append((effect, label, float(result.statistic), float(result.pvalue), len(common)))
    return out


def stats_dependence(rows: Sequence[dict]) -> list[tuple[str, float, float, int]]:
    """Per ``rome_c{n}`` variant: (variant, mean ‖ΔW − ΔW_main‖/‖ΔW_main‖, mean cosine of the directions, facts)."""
    out = []
    for m in methods_of(rows):
        change = list(per_fact(rows, m, "change_vs_main").values())
        if change:
            cosine = list(per_fact(rows, m, "cosine_vs_main").values())
            out.append((m, float(np.mean(change)), float(np.mean(cosine)), len(change)))
    return out


def seconds_per_fact(rows: Sequence[dict]) -> tuple[float, float]:
    """(mean seconds per fact for everything, of which ROME's key and δ)."""
    total = list(per_fact(rows, "cost", "seconds").values())
    rome = list(per_fact(rows, "rome", "rome_seconds").values())
    return (float(np.mean(total)) if total else math.nan), (float(np.mean(rome)) if rome else math.nan)
