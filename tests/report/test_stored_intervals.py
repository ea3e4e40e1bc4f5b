"""The stored aggregates are what every display shows: ``kneuron study all`` stores them, the report's cells, its
headline line and the web pages show exactly those numbers (read, not recomputed), each equals
:mod:`kneuron.studies.intervals` applied to the stored rows (the layers share: to the atlas's neurons, and to a
slow loop bootstrap), and an atlas studied before aggregates existed still reports, saying what to re-run."""

from __future__ import annotations

import html
import math
import shutil
import sqlite3

import numpy as np
import pytest
from typer.testing import CliRunner

from kneuron import cli
from kneuron.report import ReportData, headline_line, render_report
from kneuron.store import Atlas
from kneuron.studies.intervals import find, format_interval, interval_of, ratio_interval
from kneuron.studies.layer_distribution import top_layers

runner = CliRunner()


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    """The tiny atlas after ``kneuron study all`` (one per module: the tests only read it, or read copies)."""
    from _pytest.monkeypatch import MonkeyPatch

    from kneuron.store import run
    from studies.conftest import tiny_facts
    from tiny_models import tiny_lm

    path = tmp_path_factory.mktemp("stored") / "tiny.sqlite"
    run(tiny_lm("llama"), tiny_facts(), path, steps=3, known_only=False, progress=False, share=0.3)
    patch = MonkeyPatch()
    import kneuron.models as models

    patch.setattr(models, "load", lambda name, **_: tiny_lm("llama"))
    try:
        result = runner.invoke(cli.app, ["study", "all", "--run", str(path), "--seed", "3", "--other-facts", "2"],
                               env={"COLUMNS": "200"})
    finally:
        patch.undo()
    assert result.exit_code == 0, result.output
    return path


def per_fact(rows, variant, metric, relation=""):
    return {r["fact_id"]: r["value"] for r in rows if r["variant"] == variant and r["metric"] == metric
            and r["fact_id"] and (not relation or r["relation"] == relation)}


def test_a_stored_aggregate_is_intervals_on_the_stored_rows(studied):
    with Atlas.open(studied, read_only=True) as atlas:
        rows, stored = atlas.results("suppress_amplify"), atlas.aggregates("suppress_amplify")
        disc, disc_stored = atlas.results("discrimination"), atlas.aggregates("discrimination")
    for relation in ("", "capital"):
        kn, random = per_fact(rows, "kn", "suppress", relation), per_fact(rows, "random", "suppress", relation)
        facts = list(kn)  # in the rows' order: the seeded resamples draw facts by position
        expected = interval_of([kn[f] for f in facts])
        paired = interval_of([kn[f] for f in facts], control=[random[f] for f in facts], control_name="random")
        got = find(stored, "kn", "suppress", relation)
        assert got.n == len(facts) >= 3
        assert (got.mean, got.lo, got.hi) == pytest.approx((expected.mean, expected.lo, expected.hi), rel=1e-12)
        assert got.p == pytest.approx(paired.p, rel=1e-12) and got.control == "random"
        assert got.control_mean == pytest.approx(np.mean([random[f] for f in facts]), rel=1e-12)
    kn, baseline = per_fact(disc, "kn", "auc"), per_fact(disc, "baseline", "auc")
    facts = [f for f in kn if f in baseline]
    got = find(disc_stored, "kn", "auc")
    assert got.control == "baseline"
    assert got.p == pytest.approx(interval_of([kn[f] for f in facts], control=[baseline[f] for f in facts]).p)


def test_the_top_third_share_carries_a_cluster_bootstrap_over_facts(studied):
    with Atlas.open(studied, read_only=True) as atlas:
        rows, stored = atlas.results("layers"), atlas.aggregates("layers")
        refined = atlas.all_refined()
        facts = atlas.facts()
        baseline = {f.id: atlas.baseline_neurons(f.id) for f in facts}
        n_layers = int(atlas.meta["n_layers"])
    share_row = next(r["value"] for r in rows if r["variant"] == "kn" and r["metric"] == "top_third"
                     and r["relation"] == "")
    got = find(stored, "kn", "top_third")
    assert got.mean == pytest.approx(share_row, rel=1e-12)  # the interval is around the row the report shows
    top = set(top_layers(n_layers))
    with_neurons = [f.id for f in facts if refined.get(f.id)]
    sums = np.array([sum(1 for n in refined[f] if n.layer in top) for f in with_neurons], dtype=float)
    counts = np.array([len(refined[f]) for f in with_neurons], dtype=float)
    assert got.n == len(with_neurons) >= 3 and got.method == "bootstrap"
    # the slow reference: resample facts in a loop with the same draws, pool each resample's neurons
    picks = np.random.default_rng(0).integers(0, len(sums), (10_000, len(sums)))
    slow = [sum(sums[i] for i in pick) / sum(counts[i] for i in pick) for pick in picks]
    assert (got.lo, got.hi) == pytest.approx(tuple(np.quantile(slow, [0.025, 0.975])), rel=1e-12)
    assert got.lo <= got.mean <= got.hi
    # its paired test against the baseline's share: swapping the two sets of a fact, all 2^n swaps (n <= 13)
    base_sums = [sum(1 for n in baseline[f] if n.layer in top) for f in with_neurons]
    base_counts = [len(baseline[f]) for f in with_neurons]
    direct = ratio_interval(sums, counts, control=(base_sums, base_counts), control_name="baseline")
    assert got.p == pytest.approx(direct.p) and got.control == "baseline" and math.isfinite(got.p)


def test_the_report_shows_the_stored_numbers(studied):
    data = ReportData.from_atlas(studied)
    text = render_report(data)
    with Atlas.open(studied, read_only=True) as atlas:
        stored = {s: atlas.aggregates(s) for s in ("suppress_amplify", "layers", "discrimination")}
    cells = [format_interval(find(stored["suppress_amplify"], "kn", "suppress"), percent=True),
             format_interval(find(stored["suppress_amplify"], "random", "amplify", "capital"), percent=True),
             format_interval(find(stored["layers"], "kn", "top_third"), percent=True, signed=False),  # a share
             format_interval(find(stored["layers"], "baseline", "top_third", "capital"), percent=True, signed=False),
             format_interval(find(stored["discrimination"], "baseline", "auc"))]
    for cell in cells:
        assert "[" in cell and "n = " in cell
        assert html.escape(cell) in text, cell
    assert "p = " in cells[0] and "vs random" in cells[0]
    assert "no interval stored" not in text
    line = headline_line("r.html", data)
    suppress = find(stored["suppress_amplify"], "kn", "suppress")
    assert (f"suppress={suppress.mean * 100:+.2f}% [{suppress.lo * 100:.1f}, {suppress.hi * 100:.1f}] "
            f"n={suppress.n} ") in line
    top = find(stored["layers"], "kn", "top_third")
    assert f"top_third={top.mean * 100:.1f}% [{top.lo * 100:.1f}, {top.hi * 100:.1f}] n={top.n} " in line


def test_an_atlas_studied_before_aggregates_still_reports(studied, tmp_path):
    old = tmp_path / "old.sqlite"
    shutil.copyfile(studied, old)
    with sqlite3.connect(old) as db:  # what an atlas studied by an older kneuron looks like
        db.execute("DROP TABLE aggregates")
    with Atlas.open(old, read_only=True) as atlas:
        assert atlas.aggregates() == []
    data = ReportData.from_atlas(old)
    text = render_report(data)
    assert "no interval stored (re-run `kneuron study suppress-amplify`)" in html.unescape(text)
    assert "no interval stored (re-run `kneuron study layers`)" in html.unescape(text)
    line = headline_line("r.html", data)
    assert " n=8 " in line and "[" not in line  # the bare means with their n
    result = runner.invoke(cli.app, ["report", "--run", str(old), "--out", str(tmp_path / "old.html")])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output

    from kneuron.serve import pages

    with Atlas.open(old, read_only=True) as atlas:
        overview = pages.overview(atlas)
        relation = pages.relation_page(atlas, "capital")
        study = pages.study_page(atlas, "layers", {})
    assert all("no interval stored" in h["interval"] for h in overview["headline"])
    assert all("no interval stored" in f["interval"] for f in relation["figures"])
    assert study["intervals"] == []


def test_every_stored_mean_is_listed_and_the_estimators_table_shows_its_intervals(studied, tmp_path):
    path = tmp_path / "estimators.sqlite"
    shutil.copyfile(studied, path)
    from _pytest.monkeypatch import MonkeyPatch

    import kneuron.models as models
    from tiny_models import tiny_lm

    patch = MonkeyPatch()
    patch.setattr(models, "load", lambda name, **_: tiny_lm("llama"))
    try:
        result = runner.invoke(cli.app, ["study", "estimators", "--run", str(path), "--estimators", "gxa"],
                               env={"COLUMNS": "200"})
    finally:
        patch.undo()
    assert result.exit_code == 0, result.output
    with Atlas.open(path, read_only=True) as atlas:
        stored = atlas.aggregates("estimators")
        every = atlas.aggregates()
    own = find(stored, "gxa", "suppress")
    assert own.n and own.control == "ig" and math.isfinite(own.p)  # an estimator is paired with exact IG
    ig_own = find(stored, "ig", "suppress")
    assert ig_own.n and ig_own.control == "suppress_random" and math.isfinite(ig_own.p)  # IG with random neurons
    text = html.unescape(render_report(ReportData.from_atlas(path)))
    assert format_interval(own, percent=True, digits=2) in text  # the estimators table's cell
    listed = [a for a in every if a["study"] in ("suppress_amplify", "estimators")]
    for a in listed:  # and the folded table of every stored mean, per relation too
        assert format_interval(find([a], a["variant"], a["metric"], a["relation"])) in text


def test_the_median_and_the_generic_words_are_the_stored_intervals(studied):
    from kneuron.studies.generic import UNRELATED, by_word_rows
    from kneuron.studies.intervals import median_interval

    data = ReportData.from_atlas(studied)
    text = render_report(data)
    with Atlas.open(studied, read_only=True) as atlas:
        rows, stored = atlas.results("suppress_amplify"), atlas.aggregates("suppress_amplify")
        generic_rows, generic = atlas.results("generic"), atlas.aggregates("generic")
    for op in ("suppress", "amplify"):
        median = find(stored, "kn", f"{op}:median")
        assert median.n and median.method == "bootstrap median"
        expected = median_interval(list(per_fact(rows, "kn", op).values()))
        assert (median.mean, median.lo, median.hi, median.n) == pytest.approx(
            (expected.mean, expected.lo, expected.hi, expected.n))
        assert f"Median over facts for the knowledge neurons: {html.escape(format_interval(median, percent=True))}" \
            in text
    words = [(r["variant"], r["metric"]) for r in by_word_rows(generic_rows) if r["metric"].endswith(UNRELATED)]
    assert words, "the tiny atlas probes a generic neuron"
    for neuron, metric in words[:3]:
        interval = find(generic, neuron, metric)
        values = [r["value"] for r in by_word_rows(generic_rows) if r["variant"] == neuron and r["metric"] == metric]
        assert interval.n == len(values) and interval.mean == pytest.approx(np.mean(values))
        assert html.escape(format_interval(interval, percent=True)) in text
        activation = find(generic, neuron, metric.split("@")[0].replace("suppress_alone:", "activation:"))
        assert activation.n and html.escape(format_interval(activation, signed=False)) in text
    from kneuron.studies.intervals import wilson_interval

    with Atlas.open(studied, read_only=True) as atlas:
        done, flagged = len(atlas.facts()), atlas.generic_neurons()
    assert flagged, "the tiny atlas has a generic neuron"
    for g in flagged:  # each generic neuron's share of the facts: Wilson's interval over the done facts
        share = find(generic, str(g), "share")
        assert (share.mean, share.n) == (pytest.approx(g.facts / done), done)
        assert (share.lo, share.hi) == pytest.approx(wilson_interval(g.facts, done))
        assert f"<td class=\"\">{html.escape(format_interval(share, percent=True))}</td>" in text


def test_the_generic_summary_shows_the_stored_word_means_at_any_width(studied):
    import io

    from rich.console import Console

    from kneuron.studies.catalog.paper import generic_word_tables
    from kneuron.studies.generic import UNRELATED

    with Atlas.open(studied, read_only=True) as atlas:
        rows, generic = atlas.results("generic"), atlas.aggregates("generic")
    (neuron, metric), *_ = [(a["variant"], a["metric"]) for a in generic if a["metric"].endswith(UNRELATED)]
    cell = format_interval(find(generic, neuron, metric), percent=True)
    for width in (None, 80):
        console = Console(width=width or 400, record=True, file=io.StringIO())
        for table in generic_word_tables(rows, generic, width):
            console.print(table)
        text = console.export_text()
        assert cell in text
        assert width is None or max(len(line) for line in text.splitlines()) <= 80


def test_the_suppress_amplify_summary_lists_the_stored_medians(studied):
    from kneuron.studies.registry import study_named

    with Atlas.open(studied, read_only=True) as atlas:
        rows, stored = atlas.results("suppress_amplify"), atlas.aggregates("suppress_amplify")
    lines = dict(study_named("suppress_amplify").measures(rows, stored))
    assert lines["suppress KN (median Δp/p)"] == format_interval(find(stored, "kn", "suppress:median"), percent=True)
    assert "n = " in lines["amplify KN (median Δp/p)"]
