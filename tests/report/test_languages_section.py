"""The report's Languages section: its numbers are the study's summaries, its figures are PNGs, and it is absent
when the atlas has no cross-lingual rows."""

from __future__ import annotations

import io
import re

import pytest
import torch
from PIL import Image

from kneuron.report import ReportData, plots, render_report
from kneuron.report.languages import languages_section
from kneuron.studies.cross_lingual_edit import cross_lingual_edit, edit_summary
from kneuron.studies.languages import language_study, multilingual_keys, own_and_cross, suppression_matrix
from studies.conftest import multilingual_done_facts, multilingual_neurons, multilingual_pool
from tiny_models import tiny_lm


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    torch.set_num_threads(1)
    lm = tiny_lm("llama", layers=3, neurons=16)
    facts = multilingual_done_facts()
    keys = multilingual_keys(facts)
    return (language_study(lm, facts, multilingual_neurons(), seed=4)
            + cross_lingual_edit(lm, keys, multilingual_neurons(), pool=multilingual_pool(), counted=facts, seed=4))


def test_section_shows_the_summaries(rows):
    html = languages_section(rows, {"facts": 8}, 10)
    assert "3 facts (keys) done in at least two languages (8 of the atlas's 10 done facts)" in html
    assert "Only 3 fact(s)." in html  # few keys: said once, n everywhere
    matrix = suppression_matrix(rows, "kn")
    for mean, n in matrix.values():
        assert f"{mean:+.1%}</span> <span class=\"note\">n={n}</span>" in html
    (own, n_own), (cross, n_cross) = own_and_cross(matrix)
    assert f"{own:+.1%}</span> <span class=\"note\">n={n_own}</span>" in html
    assert f"{cross:+.1%}</span> <span class=\"note\">n={n_cross}</span>" in html
    german = edit_summary(rows, "edit_kn")["de"]
    cells = re.search(r"measured in.*?de \(German\)</td><td class=\"\">(\d+)</td>", html, re.S)
    assert cells and int(cells.group(1)) == german["keys"]
    assert f"{german['p_new_before']:.3g} → {german['p_new_after']:.3g}" in html


def test_figures_are_png_and_none_without_rows(rows):
    for figure in (plots.language_layers_figure(rows), plots.suppression_matrix_figure(rows)):
        assert Image.open(io.BytesIO(figure)).format == "PNG"
    assert plots.language_layers_figure([]) is None and plots.suppression_matrix_figure([]) is None
    assert languages_section([]) == ""


def test_report_includes_the_section_only_with_rows(rows):
    assert "<h2>Languages</h2>" in render_report(ReportData({"languages": rows}, n_facts=11))
    assert "<h2>Languages</h2>" not in render_report(ReportData({}, n_facts=11))
