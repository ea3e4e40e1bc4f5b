"""The report's bar charts draw each mean over facts from the stored aggregates: the bar's height, its error bar
(the stored 95% interval) and the n in its label are the stored numbers (doctored here, so that a recomputed
figure would differ), and an atlas without stored aggregates gets the bare mean with its n and no error bar."""

from __future__ import annotations

import math

import pytest

from kneuron.report import plots
from kneuron.studies.intervals import aggregate_rows, find

VARIANTS = ("kn", "random", "kn_no_generic", "random_no_generic")


def _rows() -> list[dict]:
    """Per-fact suppress/amplify rows of 6 facts in 2 relations, with values that differ by fact and variant."""
    rows = []
    for i in range(6):
        relation = "P17" if i < 3 else "P36"
        for k, variant in enumerate(VARIANTS):
            for metric in ("suppress", "amplify", "suppress_other", "amplify_other"):
                value = (-0.9 + 0.07 * i + 0.2 * k) * (1 if metric.startswith("amplify") else -1 if i % 2 else 1)
                rows.append({"study": "suppress_amplify", "variant": variant, "relation": relation,
                             "fact_id": f"f{i}", "metric": metric, "value": value})
    return rows


def _doctored(aggregates: list[dict]) -> list[dict]:
    """The aggregates with every mean and bound moved and n changed: what is drawn must be these."""
    return [{**a, "mean": a["mean"] + 0.5, "lo": a["lo"] + 0.25, "hi": a["hi"] + 0.75, "n": a["n"] + 100}
            for a in aggregates]


@pytest.fixture
def drawn(monkeypatch):
    """Every call of :func:`plots.draw_bars`: its bars, and the tick labels the figure set."""
    calls: list[list[plots.Bar]] = []
    original = plots.draw_bars

    def record(axis, x, bars, width, **style):
        calls.append(list(bars))
        original(axis, x, bars, width, **style)

    monkeypatch.setattr(plots, "draw_bars", record)
    return calls


def test_suppress_amplify_bars_are_the_stored_intervals(drawn):
    rows = _rows()
    aggregates = _doctored(aggregate_rows(rows, {"kn": "random", "kn_no_generic": "random_no_generic"}))
    assert plots.suppress_amplify_figure(rows, aggregates) is not None
    assert len(drawn) == 2 * len(VARIANTS)  # suppress and amplify panels
    for calls, op in ((drawn[:4], "suppress"), (drawn[4:], "amplify")):
        for bars, variant in zip(calls, VARIANTS, strict=True):
            for bar, relation in zip(bars, ("", "P17", "P36"), strict=True):
                stored = find(aggregates, variant, op, relation)
                assert (bar.mean, bar.lo, bar.hi, bar.n) == pytest.approx(
                    (stored.mean * 100, stored.lo * 100, stored.hi * 100, stored.n))
    assert plots.other_relations_figure(rows, aggregates) is not None
    own, other = drawn[-2:]
    assert [b.n for b in own] == [find(aggregates, v, op).n for v in ("kn", "kn_no_generic", "random")
                                  for op in ("suppress", "amplify")]
    assert other[0].mean == pytest.approx(find(aggregates, "kn", "suppress_other").mean * 100)
    assert other[0].hi == pytest.approx(find(aggregates, "kn", "suppress_other").hi * 100)


def test_without_stored_aggregates_a_bar_is_the_bare_mean_with_its_n(drawn):
    rows = _rows()
    plots.suppress_amplify_figure(rows)
    bar = drawn[0][1]  # kn, suppress, relation P17
    values = [r["value"] for r in rows if r["variant"] == "kn" and r["metric"] == "suppress" and r["relation"] == "P17"]
    assert bar.mean == pytest.approx(100 * sum(values) / len(values)) and bar.n == 3
    assert math.isnan(bar.lo) and math.isnan(bar.hi)


def test_the_n_of_each_group_is_in_its_label(monkeypatch):
    rows = _rows()
    aggregates = _doctored(aggregate_rows(rows))
    labels: list[list[str]] = []
    original = plots.Axes.set_xticks

    def record(self, ticks, tick_labels=None, **kwargs):
        if tick_labels is not None:
            labels.append([str(t) for t in tick_labels])
        return original(self, ticks, tick_labels, **kwargs)

    monkeypatch.setattr(plots.Axes, "set_xticks", record)
    plots.suppress_amplify_figure(rows, aggregates)
    assert labels[-1] == [f"all\nn = {find(aggregates, 'kn', 'suppress').n}", "P17\nn = 103", "P36\nn = 103"]


def test_the_interactions_curve_band_is_the_stored_interval(monkeypatch):
    rows = [{"study": "interactions", "variant": variant, "relation": "P17", "fact_id": f"f{i}",
             "metric": f"curve:{k}", "value": -0.1 * k * (i + 1) - (0.05 if variant == "kn" else 0.0)}
            for i in range(4) for k in (1, 2, 3) for variant in ("kn", "random")]
    aggregates = _doctored(aggregate_rows(rows, {"kn": "random"}))
    bands = []
    original = plots.Axes.fill_between

    def record(self, x, low, high, **kwargs):
        bands.append((list(x), list(low), list(high)))
        return original(self, x, low, high, **kwargs)

    monkeypatch.setattr(plots.Axes, "fill_between", record)
    assert plots.interactions_figure(rows, aggregates) is not None
    (_, random_lo, _), (ks, kn_lo, kn_hi) = bands
    assert ks == [1, 2, 3]
    assert kn_lo == pytest.approx([find(aggregates, "kn", f"curve:{k}").lo * 100 for k in ks])
    assert kn_hi == pytest.approx([find(aggregates, "kn", f"curve:{k}").hi * 100 for k in ks])
    assert random_lo == pytest.approx([find(aggregates, "random", f"curve:{k}").lo * 100 for k in ks])


def test_the_estimators_bars_are_the_stored_intervals(drawn):
    metrics = ("prompts", "spearman_kept", "top_recall", "refined_jaccard", "suppress", "suppress_ig",
               "suppress_random")
    rows = [{"study": "estimators", "variant": "gxa", "relation": "P17", "fact_id": f"f{i}", "metric": metric,
             "value": 4.0 if metric == "prompts" else 0.1 * (i + 1) - 0.05 * k}
            for i in range(5) for k, metric in enumerate(metrics)]
    rows += [{"study": "estimators", "variant": "ig", "relation": "P17", "fact_id": f"f{i}", "metric": "neurons",
              "value": 3.0} for i in range(5)]
    aggregates = _doctored(aggregate_rows(rows, metric_controls={"suppress": "suppress_random"}))
    assert plots.estimators_figure(rows, aggregates) is not None
    (spearman,), (recall,), (jaccard,), (suppress,), (ig,), (random,) = drawn
    for bar, metric, scale in ((spearman, "spearman_kept", 1), (recall, "top_recall", 1),
                               (jaccard, "refined_jaccard", 1), (suppress, "suppress", 100), (ig, "suppress_ig", 100),
                               (random, "suppress_random", 100)):
        stored = find(aggregates, "gxa", metric)
        assert (bar.mean, bar.lo, bar.hi, bar.n) == pytest.approx(
            (stored.mean * scale, stored.lo * scale, stored.hi * scale, stored.n)), metric
