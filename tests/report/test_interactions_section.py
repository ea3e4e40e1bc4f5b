"""The report's Neuron interactions section: its numbers are the study's summaries, its figure is a PNG, and it is
absent when the atlas has no interactions rows."""

from __future__ import annotations

import io
import math
from html import escape

import pytest
import torch
from PIL import Image

from kneuron.report import ReportData, plots, render_report
from kneuron.report.interactions import interactions_section
from kneuron.studies.interactions import curve_summary, interaction_summary, interactions_study
from studies.conftest import tiny_facts
from studies.test_interactions import five_neurons
from tiny_models import tiny_lm


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    torch.set_num_threads(1)
    lm = tiny_lm("llama", layers=3, neurons=16)
    facts = tiny_facts()
    return interactions_study(lm, facts, {fact.id: five_neurons(i) for i, fact in enumerate(facts)}, cap=4, seed=2)


def test_section_shows_the_summaries(rows):
    html = interactions_section(rows, {"facts": 8}, 10)
    assert "<h2>Neuron interactions</h2>" in html
    assert "&quot;neuron interactions not studied&quot;" in html  # the limit PAPER.md names
    assert "8 facts with knowledge neurons of the 8 it covered (the atlas has 10 done facts)" in html
    assert "Only 8 fact(s)." in html and "up to 6 pairs" in html
    for relation in ("capital", "language", "continent"):
        assert f"<th class=\"\">{relation}</th>" in html
    assert html.count("<tr>") == 1 + 17 + 1 + 8  # header, a line per figure, header, 8 facts
    # without stored aggregates (an older atlas): the bare means with their n and what to re-run
    overall = interaction_summary(rows)["all"]
    assert f"{overall['all'][0] * 100:+.1f}%, n = 8, no interval stored".replace("-", "−") in html


def test_section_shows_the_stored_intervals(rows):
    """Every mean over facts of the summary table is the stored aggregate's interval, n and (top-k) paired p
    against random neurons, per relation too."""
    from kneuron.studies.catalog.interactions import Interactions
    from kneuron.studies.intervals import aggregate_rows, find, format_interval

    aggregates = aggregate_rows(rows, Interactions.controls)
    html = interactions_section(rows, {"facts": 8}, 10, aggregates)
    assert "no interval stored" not in html
    for variant, metric, relation, percent, signed in (
            ("kn", "suppress_all", "", True, True), ("single", "delta:1", "capital", True, True),
            ("pairs", "synergistic", "", True, False), ("pairs", "mean_interaction", "language", False, True),
            ("random", "reached_90", "language", True, False), ("kn", "reached_50", "continent", True, False)):
        stored = find(aggregates, variant, metric, relation)
        assert stored.n, (variant, metric, relation)
        assert f"<td class=\"\">{escape(format_interval(stored, percent=percent, signed=signed))}</td>" in html
    kn = find(aggregates, "kn", "reached_50")
    assert kn.control == "random" and f"p = {kn.p:.2g} vs random" in html
    assert not math.isfinite(find(aggregates, "pairs", "synergistic").p)  # no control: no p


def test_figure_is_png_and_none_without_rows(rows):
    assert Image.open(io.BytesIO(plots.interactions_figure(rows))).format == "PNG"
    assert curve_summary(rows)[5][1] == 8  # every fact has five neurons: n = 8 at each k
    assert plots.interactions_figure([]) is None
    assert interactions_section([]) == ""


def test_report_includes_the_section_only_with_rows(rows):
    assert "<h2>Neuron interactions</h2>" in render_report(ReportData({"interactions": rows}, n_facts=8))
    assert "<h2>Neuron interactions</h2>" not in render_report(ReportData({}, n_facts=8))
