"""kneuron.studies.intervals against slow, obviously-correct references (scipy.stats) on fixed data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from kneuron.studies.intervals import (
    bootstrap_interval,
    format_interval,
    interval_of,
    median_interval,
    paired_permutation_p,
    wilson_interval,
)

#: fixed per-fact values (a skewed sample like suppress's relative changes)
VALUES = [-0.95, -0.91, -0.88, -0.86, -0.8, -0.77, -0.7, -0.55, -0.4, -0.12, 0.05, -0.99, -0.93, -0.6, -0.84, -0.3]


def test_bootstrap_equals_scipy_percentile_bootstrap_with_the_same_seed():
    ours = bootstrap_interval(VALUES, seed=7)
    ref = stats.bootstrap((np.array(VALUES),), np.mean, n_resamples=10_000, method="percentile",
                          confidence_level=0.95, rng=np.random.default_rng(7), vectorized=True)
    assert ours == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), rel=1e-12)


def test_median_interval_equals_scipy_percentile_bootstrap_of_the_median_with_the_same_seed():
    ours = median_interval(VALUES + [math.nan], seed=7)
    ref = stats.bootstrap((np.array(VALUES),), np.median, n_resamples=10_000, method="percentile",
                          confidence_level=0.95, rng=np.random.default_rng(7), vectorized=True)
    assert (ours.lo, ours.hi) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), rel=1e-12)
    assert ours.mean == np.median(VALUES) and ours.n == len(VALUES) and ours.method == "bootstrap median"
    assert median_interval([]).n == 0


def test_cluster_bootstrap_is_the_plain_one_when_each_fact_has_one_row_and_resamples_facts():
    assert bootstrap_interval(VALUES, [1] * len(VALUES)) == pytest.approx(bootstrap_interval(VALUES), rel=1e-12)
    # facts of several rows: the slow reference resamples facts in a loop, with the same draws
    sums, counts = np.array([3.0, 1.0, 0.0, 5.0, 2.0]), np.array([4, 2, 1, 6, 3])
    rng = np.random.default_rng(0)
    picks = rng.integers(0, 5, (10_000, 5))
    slow = [sum(sums[i] for i in row) / sum(counts[i] for i in row) for row in picks]
    assert bootstrap_interval(sums, counts) == pytest.approx(tuple(np.quantile(slow, [0.025, 0.975])), rel=1e-12)


@pytest.mark.parametrize(("k", "n"), [(0, 5), (3, 7), (12, 16), (32, 32), (1, 1)])
def test_wilson_equals_scipy(k, n):
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ref.low, ref.high), rel=1e-9, abs=1e-12)


def _scipy_paired_p(a, b, n_resamples=10_000):
    return stats.permutation_test((np.array(a), np.array(b)), lambda x, y, axis: np.mean(x - y, axis=axis),
                                  permutation_type="samples", n_resamples=n_resamples, vectorized=True,
                                  rng=np.random.default_rng(0)).pvalue


def test_paired_test_is_exact_and_equals_scipy_for_small_n():
    a, b = VALUES[:10], [v + d for v, d in zip(VALUES[:10], [0.3, -0.1, 0.5, 0.2, 0.4, 0.1, -0.2, 0.6, 0.3, 0.05],
                                               strict=True)]
    assert paired_permutation_p(a, b) == pytest.approx(_scipy_paired_p(a, b), rel=1e-12)
    assert paired_permutation_p(a, a) == 1.0


def test_paired_test_monte_carlo_agrees_with_scipy_for_large_n():
    rng = np.random.default_rng(3)
    a = rng.normal(0.0, 1.0, 30)
    b = a + rng.normal(0.35, 1.0, 30)
    ours, ref = paired_permutation_p(a, b), _scipy_paired_p(a, b)
    assert abs(ours - ref) < 4 * math.sqrt(ref * (1 - ref) / 10_000) + 1e-4  # two Monte Carlo draws of one p
    assert paired_permutation_p(a, b) == ours  # seeded


def test_interval_of_picks_wilson_for_shares_and_formats_like_the_issue():
    share = interval_of([1, 1, 0, 1, 1, 0, 1, 1])
    assert share.method == "wilson" and share.n == 8 and share.mean == 0.75
    mean = interval_of(VALUES + [math.nan], control=[v + 0.7 for v in VALUES] + [0.0], control_name="random")
    assert mean.method == "bootstrap" and mean.n == len(VALUES)
    assert mean.lo < mean.mean < mean.hi and mean.p < 0.01
    text = format_interval(mean, percent=True)
    assert text.startswith(f"{mean.mean * 100:+.1f}%".replace("-", "−") + " [") and f"n = {len(VALUES)}" in text
    assert text.endswith("vs random")
    assert format_interval(interval_of([])) == "–"


def test_aggregate_rows_over_facts_and_relations_with_the_paired_test_against_the_control():
    from kneuron.studies.intervals import aggregate_rows, find

    rows, kn, rnd = [], {}, {}
    for i, value in enumerate(VALUES):
        fact, relation = f"r{i % 2}:f{i}", f"r{i % 2}"
        kn[fact], rnd[fact] = value, value / 4 + 0.01 * i
        rows += [{"variant": "kn", "relation": relation, "fact_id": fact, "metric": "suppress", "value": value},
                 {"variant": "random", "relation": relation, "fact_id": fact, "metric": "suppress",
                  "value": rnd[fact]}]
    # a per-neuron measure: several rows a fact (the facts are resampled, not the rows)
    rows += [{"variant": "kn_neuron", "relation": "r0", "fact_id": f"r0:f{i}", "metric": "rank", "value": v}
             for i, values in enumerate([[1, 2, 3], [4], [5, 6]]) for v in values]
    rows += [{"variant": "params", "relation": "", "fact_id": "", "metric": "seed", "value": 0.0}]
    found = aggregate_rows(rows, {"kn": "random"})
    ids = list(kn)
    for relation in ("", "r0", "r1"):
        chosen = [f for f in ids if not relation or f.startswith(relation + ":")]
        got = find(found, "kn", "suppress", relation)
        assert (got.mean, got.n, got.control) == (pytest.approx(np.mean([kn[f] for f in chosen])), len(chosen),
                                                  "random")
        assert (got.lo, got.hi) == pytest.approx(bootstrap_interval([kn[f] for f in chosen]), rel=1e-12)
        assert got.p == pytest.approx(paired_permutation_p([kn[f] for f in chosen], [rnd[f] for f in chosen]))
        assert got.control_mean == pytest.approx(np.mean([rnd[f] for f in chosen]))
    assert math.isnan(find(found, "random", "suppress").p)
    neuron = find(found, "kn_neuron", "rank")
    assert (neuron.mean, neuron.n) == (3.5, 3)
    assert (neuron.lo, neuron.hi) == pytest.approx(bootstrap_interval([6, 4, 11], [3, 1, 2]), rel=1e-12)
    assert not [a for a in found if a["variant"] == "params"]


def test_a_share_shows_no_sign_and_a_change_does():
    share = interval_of([1, 0, 1, 1, 0, 1, 1, 1])  # 0/1 per fact: Wilson's interval
    assert share.method == "wilson"
    assert format_interval(share, percent=True).startswith("75.0% [")
    change = interval_of([0.2, 0.3, 0.25, 0.1])
    assert format_interval(change, percent=True).startswith("+21.2% [")
    assert format_interval(change, percent=True, signed=False).startswith("21.2% [")
