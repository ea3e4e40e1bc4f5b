"""Uncertainty of an aggregate over facts: its n, a 95% interval, and a paired p-value against its control.

A study's figure is a mean over facts (each fact's value is already a mean over its prompts), so the unit a
claim is about is the fact, and every resampling here resamples facts:

* :func:`bootstrap_interval`: the percentile bootstrap of the mean, seeded, with a fixed number of resamples
  (10,000). When a fact has several rows (one per neuron, say) the facts are resampled as clusters and the
  statistic is the mean of the resampled facts' rows (sum over count), so the point estimate is the displayed
  row mean and the interval still counts facts, not rows. With one row per fact it is exactly
  ``scipy.stats.bootstrap(..., method="percentile")`` with the same seed (tested).
* :func:`median_interval`: the same percentile bootstrap over facts of the median (one value per fact), for the
  figures a study shows as a median (the suppress/amplify median over facts); it is
  ``scipy.stats.bootstrap(..., np.median, method="percentile")`` with the same seed (tested).
* :func:`wilson_interval`: the Wilson score interval for a share of facts (0/1 values, one per fact), which has
  a closed form and good coverage at small n where a bootstrap of 0/1 values is degenerate (all-0 or all-1
  samples give a zero-width bootstrap interval; Wilson's does not).
* :func:`paired_permutation_p`: the two-sided paired sign-flip permutation test of the mean difference between a
  measure and its control on the same facts. Why this test: it tests the statistic the table shows (the mean,
  not a median or rank sum as Wilcoxon's signed-rank test does), assumes only that under no effect each fact's
  difference is as likely to have either sign, and is exact (all 2^n sign flips) when n is small; otherwise
  10,000 seeded random flips with the (count + 1) / (resamples + 1) correction. It equals
  ``scipy.stats.permutation_test(..., permutation_type="samples")`` (tested).

Pure numpy, so that it runs fast on many measures at once and gives the same numbers on every machine.

Example:
    >>> values = [-0.9, -0.8, -0.75, -0.95]
    >>> summary = interval_of(values)            # Interval(mean=-0.85, lo=..., hi=..., n=4, method='bootstrap')
    >>> format_interval(summary, percent=True)   # '−85.0% [−92.5, −77.5], n = 4'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: resamples of the bootstrap and of a Monte Carlo permutation test
N_RESAMPLES = 10_000
#: the confidence of every interval
CONFIDENCE = 0.95
#: the seed of every resampling (each aggregate starts a fresh generator from it: order does not matter)
SEED = 0
#: the largest n for which the permutation test enumerates every sign flip (2^n of them)
EXACT_MAX = 13


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` facts with its interval (``lo``, ``hi``; NaN when ``n`` is 0) and how it was made
    (``"bootstrap"``, ``"wilson"``); ``p`` is the paired test's p-value against ``control`` (NaN: none)."""

    mean: float
    lo: float
    hi: float
    n: int
    method: str
    control: str = ""
    control_mean: float = math.nan
    p: float = math.nan


def bootstrap_interval(sums: Sequence[float], counts: Sequence[float] | None = None, *,
                       n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE, seed: int = SEED,
                       ) -> tuple[float, float]:
    """The percentile bootstrap interval of ``sum(sums) / sum(counts)`` over facts (``counts`` None: one row per
    fact, the plain mean of ``sums``). Resamples facts with replacement ``n_resamples`` times."""
    s = np.asarray(sums, dtype=float)
    n = s.shape[0]
    if n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, (n_resamples, n))
    if counts is None:
        stats = s[picks].mean(axis=1)
    else:
        c = np.asarray(counts, dtype=float)
        stats = s[picks].sum(axis=1) / c[picks].sum(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return float(lo), float(hi)


def median_interval(values: Sequence[float], *, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE,
                    seed: int = SEED) -> Interval:
    """The median of per-fact ``values`` (finite ones) with its percentile bootstrap interval over facts (facts
    resampled with replacement ``n_resamples`` times, the median of each resample): an :class:`Interval` whose
    ``mean`` holds the median and whose method is ``"bootstrap median"``."""
    v = np.asarray([float(x) for x in values if math.isfinite(x)], dtype=float)
    n = v.shape[0]
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "none")
    picks = np.random.default_rng(seed).integers(0, n, (n_resamples, n))
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(np.median(v[picks], axis=1), [alpha, 1 - alpha])
    return Interval(float(np.median(v)), float(lo), float(hi), n, "bootstrap median")


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a share ``successes / n`` (no continuity correction)."""
    if n == 0:
        return math.nan, math.nan
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_permutation_p(values: Sequence[float], control: Sequence[float], *, n_resamples: int = N_RESAMPLES,
                         seed: int = SEED) -> float:
    """Two-sided p-value of the paired sign-flip permutation test of ``mean(values - control)`` (same facts, same
    order). Exact for at most :data:`EXACT_MAX` facts; NaN without facts."""
    d = np.asarray(values, dtype=float) - np.asarray(control, dtype=float)
    n = d.shape[0]
    if n == 0:
        return math.nan
    observed = d.mean()
    if n <= EXACT_MAX:
        flips = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)[None, ::-1]) & 1)
        adjustment, total = 0, 2 ** n
    else:
        flips = np.random.default_rng(seed).choice([1.0, -1.0], size=(n_resamples, n))
        adjustment, total = 1, n_resamples
    null = (flips * d).mean(axis=1)
    gamma = abs(observed) * np.finfo(float).eps * 100  # ties up to rounding count as ties
    less = (np.count_nonzero(null <= observed + gamma) + adjustment) / (total + adjustment)
    greater = (np.count_nonzero(null >= observed - gamma) + adjustment) / (total + adjustment)
    return float(min(1.0, 2 * min(less, greater)))


def paired_ratio_permutation_p(sums: Sequence[float], counts: Sequence[float], control_sums: Sequence[float],
                               control_counts: Sequence[float], *, n_resamples: int = N_RESAMPLES,
                               seed: int = SEED) -> float:
    """Two-sided p-value of the paired permutation test of a pooled share against its control's on the same
    facts: the statistic is ``sum(sums) / sum(counts) - sum(control_sums) / sum(control_counts)``, and each
    permutation swaps a fact's (sum, count) with its control's (under no effect either is as likely to be
    either). With every count 1 this is :func:`paired_permutation_p` (a swap flips the difference's sign).
    Exact for at most :data:`EXACT_MAX` facts; NaN without facts."""
    a, ca = np.asarray(sums, dtype=float), np.asarray(counts, dtype=float)
    b, cb = np.asarray(control_sums, dtype=float), np.asarray(control_counts, dtype=float)
    n = a.shape[0]
    if n == 0:
        return math.nan
    if n <= EXACT_MAX:
        keep = ((np.arange(2 ** n)[:, None] >> np.arange(n)[None, ::-1]) & 1) == 0
        adjustment, total = 0, 2 ** n
    else:
        keep = np.random.default_rng(seed).choice([True, False], size=(n_resamples, n))
        adjustment, total = 1, n_resamples

    def statistic(mask: np.ndarray) -> np.ndarray:
        top = np.where(mask, a, b).sum(axis=-1) / np.where(mask, ca, cb).sum(axis=-1)
        return top - np.where(mask, b, a).sum(axis=-1) / np.where(mask, cb, ca).sum(axis=-1)

    observed = float(statistic(np.ones(n, dtype=bool)))
    null = statistic(keep)
    gamma = abs(observed) * np.finfo(float).eps * 100
    less = (np.count_nonzero(null <= observed + gamma) + adjustment) / (total + adjustment)
    greater = (np.count_nonzero(null >= observed - gamma) + adjustment) / (total + adjustment)
    return float(min(1.0, 2 * min(less, greater)))


def ratio_interval(sums: Sequence[float], counts: Sequence[float], *, control: tuple[Sequence[float],
                   Sequence[float]] | None = None, control_name: str = "", seed: int = SEED) -> Interval:
    """The :class:`Interval` of a pooled share over facts, ``sum(sums) / sum(counts)`` (a fact's ``sums``: its
    items that count, ``counts``: all its items; facts without items left out): the cluster bootstrap over facts,
    and with ``control`` (its per-fact sums and counts, same facts and order) the paired
    :func:`paired_ratio_permutation_p` (over the facts with items in both)."""
    kept = [i for i, c in enumerate(counts) if c > 0]
    s, c = [float(sums[i]) for i in kept], [float(counts[i]) for i in kept]
    if not kept:
        return Interval(math.nan, math.nan, math.nan, 0, "none", control_name)
    lo, hi = bootstrap_interval(s, c, seed=seed)
    found = Interval(sum(s) / sum(c), lo, hi, len(kept), "bootstrap", control_name)
    if control is None:
        return found
    both = [i for i, k in enumerate(counts) if k > 0 and control[1][i] > 0]
    if not both:
        return found
    pick = [[float(v[i]) for i in both] for v in (sums, counts, control[0], control[1])]
    p = paired_ratio_permutation_p(*pick, seed=seed)
    control_mean = sum(pick[2]) / sum(pick[3])
    return Interval(found.mean, lo, hi, found.n, "bootstrap", control_name, control_mean, p)


def mean_interval(values: Sequence[float], *, seed: int = SEED) -> Interval:
    """The plain mean of per-fact ``values`` (finite ones; a neuron's score, a count) with its percentile bootstrap
    interval over facts: never Wilson's, even when every value is 0 or 1 (such a value need not be a share)."""
    kept = [float(v) for v in values if math.isfinite(v)]
    if not kept:
        return Interval(math.nan, math.nan, math.nan, 0, "none")
    return Interval(sum(kept) / len(kept), *bootstrap_interval(kept, seed=seed), len(kept), "bootstrap")


def count_interval(counts: Sequence[float], *, seed: int = SEED) -> Interval:
    """The mean of per-fact counts (refined neurons per fact) with its bootstrap interval over facts
    (:func:`mean_interval`: a count of 0 or 1 is not a share)."""
    return mean_interval(counts, seed=seed)


def is_share(values: Sequence[float]) -> bool:
    """Whether every value is 0 or 1 (a share of facts)."""
    return len(values) > 0 and all(v in (0.0, 1.0) for v in values)


def interval_of(values: Sequence[float], counts: Sequence[float] | None = None, *,
                control: Sequence[float] | None = None, control_name: str = "", seed: int = SEED) -> Interval:
    """The :class:`Interval` of per-fact ``values`` (finite ones; ``counts``: each fact's number of rows when
    ``values`` are per-fact sums). A share (0/1 values, one per fact) gets Wilson's interval, anything else the
    bootstrap. ``control``: the control's values on the same facts (same order) for the paired test."""
    kept = [i for i, v in enumerate(values) if math.isfinite(v)]
    s = [float(values[i]) for i in kept]
    c = None if counts is None else [float(counts[i]) for i in kept]
    n = len(s)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "none", control_name)
    if c is None and is_share(s):
        mean = sum(s) / n
        (lo, hi), method = wilson_interval(int(sum(s)), n), "wilson"
    else:
        mean = sum(s) / (sum(c) if c is not None else n)
        (lo, hi), method = bootstrap_interval(s, c, seed=seed), "bootstrap"
    p, control_mean = math.nan, math.nan
    if control is not None:
        pairs = [(values[i], control[i]) for i in range(len(values))
                 if math.isfinite(values[i]) and math.isfinite(control[i])]
        if pairs:
            control_mean = float(np.mean([b for _, b in pairs]))
            p = paired_permutation_p([a for a, _ in pairs], [b for _, b in pairs], seed=seed)
    return Interval(mean, lo, hi, n, method, control_name, control_mean, p)


def format_interval(interval: Interval, *, percent: bool = False, digits: int = 1, signed: bool | None = None,
                    significant: int | None = None) -> str:
    """``−81.6% [−88.0, −74.1], n = 32`` (``percent``), or ``0.842 [0.80, 0.88], n = 32``; with the paired
    p-value appended (``, p = 0.0001 vs random``) when there is one; a dash when n is 0. ``signed``: whether a
    percentage shows its sign (a change does, a share does not); None: all but Wilson's shares. ``significant``:
    that many significant digits instead (``0.0004213 [0.0003127, 0.0005301], n = 12``), for values of any size
    such as attribution scores."""
    if interval.n == 0 or not math.isfinite(interval.mean):
        return "–"
    signed = interval.method != "wilson" if signed is None else signed
    scale, unit = (100.0, "%") if percent else (1.0, "")
    spec = (f"+.{digits}f" if signed else f".{digits}f") if percent else f".{max(digits, 3)}f"
    if significant is not None:
        spec = f".{significant}g"

    def show(value: float) -> str:
        return "–" if not math.isfinite(value) else f"{value * scale:{spec}}".replace("-", "−")

    text = f"{show(interval.mean)}{unit} [{show(interval.lo)}, {show(interval.hi)}], n = {interval.n}"
    if math.isfinite(interval.p):
        text += f", p = {interval.p:.2g} vs {interval.control}" if interval.control else f", p = {interval.p:.2g}"
    return text


def format_mean(value: float, *, percent: bool = False, digits: int = 1, signed: bool = True) -> str:
    """A mean alone in :func:`format_interval`'s style (``−81.6%``, ``0.842``); a dash when not finite."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    sign = "+" if signed else ""
    text = f"{value * 100:{sign}.{digits}f}%" if percent else f"{value:.{max(digits, 3)}f}"
    return text.replace("-", "−")


def row_mean(rows: Sequence[dict], variant: str, metric: str, relation: str = "") -> tuple[float, int]:
    """The mean of a (variant, metric)'s per-fact rows (``relation`` ``""``: all facts) and its number of facts,
    weighting rows as :func:`aggregate_rows` does (sum over count): what an atlas without stored aggregates can
    still show."""
    values, facts = [], set()
    for r in rows:
        if (r.get("variant") == variant and r.get("metric") == metric and r.get("fact_id")
                and (not relation or r.get("relation") == relation)):
            value = r.get("value")
            if isinstance(value, (int, float)) and math.isfinite(value):
                values.append(float(value))
                facts.add(r["fact_id"])
    return (sum(values) / len(values) if values else math.nan), len(facts)


def figure(aggregates: Sequence[dict], variant: str, metric: str, relation: str = "", *, rows: Sequence[dict] = (),
           study: str = "", percent: bool = False, digits: int = 1, pooled: float | None = None,
           signed: bool | None = None) -> str:
    """How the CLI, the report and the web app show one aggregate: the stored interval
    (:func:`format_interval`, read from ``aggregates``, never recomputed); without one (an atlas studied before
    kneuron stored aggregates) the bare mean of ``rows`` with its n and what to re-run (``pooled``: the bare
    figure of a study whose rows are not per fact, such as the layers study's share, shown without a sign unless
    ``signed``); a dash when neither."""
    stored = find(aggregates, variant, metric, relation)
    signed = (pooled is None) if signed is None else signed
    if stored.n:
        return format_interval(stored, percent=percent, digits=digits,
                               signed=None if pooled is None and signed else signed)
    mean, n = (pooled, 0) if pooled is not None else row_mean(rows, variant, metric, relation)
    if not n and not (pooled is not None and math.isfinite(pooled)):
        return "–"
    again = f"re-run `kneuron study {study.replace('_', '-')}`" if study else "re-run its study"
    count = f", n = {n}" if n else ""
    return f"{format_mean(mean, percent=percent, digits=digits, signed=signed)}{count}, no interval stored ({again})"


def headline_tail(interval: Interval, *, percent: bool = False, n: int = 0) -> str:
    """What the demo's headline appends to a ``key=value`` figure, ASCII: `` [-88.0, -74.1] n=16`` (``percent``:
    in percent points, else ``[0.801, 0.880]``) from a stored interval; `` n=16`` alone when none was stored and
    ``n`` facts gave the bare mean; empty when there is neither (the figure is ``nan``)."""
    if interval.n and math.isfinite(interval.lo) and math.isfinite(interval.hi):
        lo, hi = (f"{interval.lo * 100:.1f}", f"{interval.hi * 100:.1f}") if percent else \
            (f"{interval.lo:.3f}", f"{interval.hi:.3f}")
        return f" [{lo}, {hi}] n={interval.n}"
    count = interval.n or n
    return f" n={count}" if count else ""


def aggregate_rows(rows: Sequence[dict], controls: Mapping[str, str] | None = None, *, seed: int = SEED,
                   metric_controls: Mapping[str, str] | None = None) -> list[dict]:
    """The stored aggregates of a study's per-fact rows (those with a fact id, not ``params``): one per
    (variant, metric) over all facts (relation ``""``) and one per relation, each a dict of variant, relation,
    metric and the :class:`Interval`'s fields. ``controls``: variant -> its control variant (the same metric on
    the same facts), for the paired test; ``metric_controls``: metric -> its control metric of the same variant
    (the estimators study's ``suppress`` against ``suppress_random``), for measures with no control variant. A
    fact with several rows of a (variant, metric) counts once (the cluster bootstrap); its value in the paired
    test is the mean of its rows."""
    controls, metric_controls = dict(controls or {}), dict(metric_controls or {})
    groups: dict[tuple[str, str], dict[str, list]] = {}
    relation_of: dict[str, str] = {}
    for r in rows:
        if r.get("variant") == "params" or not r.get("fact_id"):
            continue
        value = r.get("value")
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        relation_of[r["fact_id"]] = str(r.get("relation") or "")
        facts = groups.setdefault((str(r["variant"]), str(r["metric"])), {})
        facts.setdefault(r["fact_id"], []).append(float(value))
    out = []
    for (variant, metric), facts in groups.items():
        if variant in controls:
            control_name, control = controls[variant], groups.get((controls[variant], metric))
        elif metric in metric_controls:
            control_name, control = metric_controls[metric], groups.get((variant, metric_controls[metric]))
        else:
            control_name, control = "", None
        relations = [""] + sorted({relation_of[f] for f in facts})
        for relation in relations:
            ids = [f for f in facts if not relation or relation_of[f] == relation]
            several = any(len(facts[f]) > 1 for f in ids)
            values = [sum(facts[f]) for f in ids]
            counts = [len(facts[f]) for f in ids] if several else None
            paired = None
            if control is not None:
                means = [sum(facts[f]) / len(facts[f]) for f in ids]
                kept = [(m, sum(control[f]) / len(control[f])) for f, m in zip(ids, means, strict=True) if f in control]
                paired = kept
            if paired is not None:
                found = interval_of(values, counts, seed=seed)
                tested = interval_of([a for a, _ in paired], control=[b for _, b in paired],
                                     control_name=control_name, seed=seed) if paired else None
                found = Interval(found.mean, found.lo, found.hi, found.n, found.method, control_name,
                                 tested.control_mean if tested else math.nan, tested.p if tested else math.nan)
            else:
                found = interval_of(values, counts, seed=seed)
            out.append({"variant": variant, "relation": relation, "metric": metric, **found.__dict__})
    return out


def median_aggregates(rows: Sequence[dict], measures: Sequence[tuple[str, str]], *, seed: int = SEED) -> list[dict]:
    """The stored aggregates of medians over facts: for each (variant, metric) in ``measures``, overall and per
    relation, :func:`median_interval` of the facts' values (a fact with several rows: their mean), stored under the
    metric ``metric + ":median"`` (its ``mean`` field holds the median; no control)."""
    out = []
    for variant, metric in measures:
        facts: dict[str, list[float]] = {}
        relation_of: dict[str, str] = {}
        for r in rows:
            value = r.get("value")
            if (r.get("variant") == variant and r.get("metric") == metric and r.get("fact_id")
                    and isinstance(value, (int, float)) and math.isfinite(value)):
                facts.setdefault(r["fact_id"], []).append(float(value))
                relation_of[r["fact_id"]] = str(r.get("relation") or "")
        if not facts:
            continue
        for relation in ["", *sorted(set(relation_of.values()))]:
            values = [sum(v) / len(v) for f, v in facts.items() if not relation or relation_of[f] == relation]
            found = median_interval(values, seed=seed)
            out.append({"variant": variant, "relation": relation, "metric": f"{metric}:median", **found.__dict__})
    return out


def find(aggregates: Sequence[dict], variant: str, metric: str, relation: str = "") -> Interval:
    """The stored :class:`Interval` of (variant, metric, relation) in ``aggregates`` (n 0 when absent)."""
    for a in aggregates:
        if a["variant"] == variant and a["metric"] == metric and a["relation"] == relation:
            return Interval(**{k: a[k] for k in Interval.__dataclass_fields__})
    return Interval(math.nan, math.nan, math.nan, 0, "none")
