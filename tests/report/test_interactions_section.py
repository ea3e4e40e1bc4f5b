"""The report's Neuron interactions section: its numbers are the study's summaries, its figure is a PNG, and it is
absent when the atlas has no interactions rows."""

from __future__ import annotations

import io

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
    overall = interaction_summary(rows)["all"]
    assert f"{overall['all'][0]:+.1%}</span>" in html
    assert f"{overall['best single'][0]:+.1%}</span>" in html
    shares = " / ".join(f"{overall[k][0]:.0%}" for k in ("synergistic", "redundant", "additive"))
    assert f"<td class=\"\">{shares}</td>" in html
    assert f"{overall['mean interaction'][0]:+.3f}" in html
    mean, reached = overall["needed 50 kn"]
    facts = overall["reached 50 kn"][1]
    assert (f"{mean:.1f} ({reached}/{facts})" if reached else f"– (0/{facts})") in html
    for relation in ("capital", "language", "continent"):
        assert f'<td class="l">{relation}</td>' in html
    assert html.count("<tr>") == 1 + 4 + 1 + 8  # header, all + 3 relations, header, 8 facts


def test_figure_is_png_and_none_without_rows(rows):
    assert Image.open(io.BytesIO(plots.interactions_figure(rows))).format == "PNG"
    assert curve_summary(rows)[5][1] == 8  # every fact has five neurons: n = 8 at each k
    assert plots.interactions_figure([]) is None
    assert interactions_section([]) == ""


def test_report_includes_the_section_only_with_rows(rows):
    assert "<h2>Neuron interactions</h2>" in render_report(ReportData({"interactions": rows}, n_facts=8))
    assert "<h2>Neuron interactions</h2>" not in render_report(ReportData({}, n_facts=8))
