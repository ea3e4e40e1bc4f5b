"""Summaries of the edit-methods study's rows (:mod:`kneuron.studies.edit_methods`): one table of every metric
per method (each mean over the facts with its stored 95% interval, n and paired p against the method's control,
read from the aggregates the runner stored, never recomputed; the paper's ΔPPL, which is not a mean over facts,
with its number of edits), and Hase et al.'s check (does the tracing effect at the edit layer predict ROME's
success per fact? Spearman over facts); what the CLI and the report show."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from kneuron.studies.base import number
from kneuron.studies.display import stored_figure
from kneuron.studies.edit_methods import STUDY
from kneuron.studies.editing import update_summary

#: each method's control for the paired tests of its stored aggregates (same metric, same facts): the paper's KN
#: update and ROME against the signed KN update (the KN edit that works on gated FFNs, so ROME is tested against the
#: better KN edit), and every ``rome_c{n}`` against ``rome`` (same key and δ, C from fewer tokens; see
#: :func:`controls_of`)
CONTROLS: Mapping[str, str] = {"kn": "kn_signed", "rome": "kn_signed"}

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


def controls_of(rows: Sequence[dict]) -> dict[str, str]:
    """:data:`CONTROLS` and ``rome_c{n}`` -> ``rome`` for each such variant in the rows."""
    return {**CONTROLS, **{m: "rome" for m in methods_of(rows) if m.startswith("rome_c")}}


def control_heading(method: str, rows: Sequence[dict]) -> str:
    """A method's column heading: ``rome (p vs kn_signed)``, or the method alone when it has no control."""
    control = controls_of(rows).get(method)
    return f"{method} (p vs {control})" if control else method


def percent_of(metric: str) -> bool:
    """Whether a table metric is a share (shown in percent) rather than a probability."""
    return not metric.startswith("own_p_new")


def comparison(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, dict[str, str]]]:
    """Per table row, per method, the cell as shown: facts edited (``2 of 3``); each mean over facts with its stored
    interval, n and paired p against the method's control (:func:`~kneuron.studies.display.stored_figure`; an atlas
    studied before aggregates were stored: the bare mean with its n and what to re-run); the paper's ΔPPL with the
    number of edits behind it (no interval: a difference of exponentiated means)."""
    methods = methods_of(rows)
    edited = {m: per_fact(rows, m, "edited") for m in methods}
    out: list[tuple[str, dict[str, str]]] = [
        ("facts edited", {m: f"{sum(edited[m].values()):.0f} of {len(edited[m])}" for m in methods})]
    for label, metric in TABLE:
        out.append((label, {m: stored_figure(aggregates, rows, STUDY, m, metric, percent=percent_of(metric),
                                             signed=False, name_control=False) for m in methods}))
    for label, tag in PPL:
        cells = {}
        for m in methods:
            edits = len(per_fact(rows, m, f"{tag}_log_ppl_after"))
            delta = number(update_summary(rows, m)[f"{tag}_delta_ppl"], "+.3g").replace("-", "−")
            cells[m] = f"{delta} over {edits} edits" if edits else "–"
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


def stats_dependence(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str, str]]:
    """Per ``rome_c{n}`` variant: (variant, mean ‖ΔW − ΔW_main‖/‖ΔW_main‖, mean cosine of the directions), each
    with its stored interval and n (:func:`~kneuron.studies.display.stored_figure`)."""
    out = []
    for m in methods_of(rows):
        if per_fact(rows, m, "change_vs_main"):
            out.append((m, *(stored_figure(aggregates, rows, STUDY, m, metric, percent=False, signed=False, digits=4,
                                           name_control=False) for metric in ("change_vs_main", "cosine_vs_main"))))
    return out


def seconds_per_fact(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> tuple[str, str]:
    """(mean seconds per fact for everything, of which ROME's key and δ), each with its stored interval and n."""
    return (stored_figure(aggregates, rows, STUDY, "cost", "seconds", percent=False, signed=False),
            stored_figure(aggregates, rows, STUDY, "rome", "rome_seconds", percent=False, signed=False,
                          name_control=False))
