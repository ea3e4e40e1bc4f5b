"""The report's Languages section: its numbers are the study's summaries, its figures are PNGs, and it is absent
when the atlas has no cross-lingual rows."""

from __future__ import annotations

import io
import math
import re
from html import escape

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
    """Every mean over facts is the stored aggregate's interval, n and paired p: the matrix cells, own and other
    languages (a key's cells pooled), the per-language edit; without aggregates the bare means with their n."""
    from kneuron.studies.catalog.languages import Languages
    from kneuron.studies.intervals import aggregate_rows, find, format_interval
    from kneuron.studies.languages_summary import language_aggregates

    aggregates = aggregate_rows(rows, Languages.controls) + language_aggregates(rows, Languages.controls)
    html = languages_section(rows, {"facts": 8}, 10, aggregates)
    assert "3 facts (keys) done in at least two languages (8 of the atlas's 10 done facts)" in html
    assert "Only 3 fact(s)." in html  # few keys: said once, n everywhere
    assert "no interval stored" not in html
    matrix = suppression_matrix(rows, "kn")
    for (source, target), (mean, n) in matrix.items():
        stored = find(aggregates, "kn", f"suppress@{source}>{target}")
        assert stored.n == n and stored.mean == pytest.approx(mean) and stored.control == "random"
        assert f"<td class=\"\">{escape(format_interval(stored, percent=True))}</td>" in html
    (own, n_own), (cross, n_cross) = own_and_cross(matrix)
    for metric, mean in (("suppress_own", own), ("suppress_cross", cross)):
        stored = find(aggregates, "kn", metric)
        assert stored.n == 3 and stored.mean == pytest.approx(mean)  # pooled cells, n = the keys
        assert math.isfinite(stored.p) and escape(format_interval(stored, percent=True)) in html
    german = edit_summary(rows, "edit_kn")["de"]
    cells = re.search(r"de \(German\)</td><td class=\"\">(\d+)</td>", html, re.S)
    assert cells and int(cells.group(1)) == german["keys"]
    stored = find(aggregates, "edit_kn", "p_new_after@de")
    assert stored.mean == pytest.approx(german["p_new_after"]) and stored.control == "edit_random"
    assert escape(format_interval(stored, signed=False)) in html
    old = languages_section(rows, {"facts": 8}, 10)  # an atlas studied before the aggregates were stored
    en_fr = matrix["en", "fr"]
    assert f"{en_fr[0] * 100:+.1f}%, n = {en_fr[1]}, no interval stored".replace("-", "−") in old


def test_figures_are_png_and_none_without_rows(rows):
    for figure in (plots.language_layers_figure(rows), plots.suppression_matrix_figure(rows)):
        assert Image.open(io.BytesIO(figure)).format == "PNG"
    assert plots.language_layers_figure([]) is None and plots.suppression_matrix_figure([]) is None
    assert languages_section([]) == ""


def test_report_includes_the_section_only_with_rows(rows):
    assert "<h2>Languages</h2>" in render_report(ReportData({"languages": rows}, n_facts=11))
    assert "<h2>Languages</h2>" not in render_report(ReportData({}, n_facts=11))


def test_the_matrix_heatmap_cells_show_the_stored_interval_and_n(rows, monkeypatch):
    """Each cell of the heatmap reads its mean, 95% interval and n from the stored aggregates (doctored here, so
    that a figure recomputed from the rows would differ); without them, the bare mean and n."""
    from matplotlib.axes import Axes

    from kneuron.studies.catalog.languages import Languages
    from kneuron.studies.intervals import aggregate_rows, find
    from kneuron.studies.languages_summary import language_aggregates

    stored = aggregate_rows(rows, Languages.controls) + language_aggregates(rows, Languages.controls)
    doctored = [{**a, "mean": a["mean"] + 0.5, "lo": a["lo"] + 0.25, "hi": a["hi"] + 0.75, "n": a["n"] + 100}
                for a in stored]
    texts: list[str] = []
    original = Axes.text

    def record(self, x, y, s, *args, **kwargs):
        texts.append(str(s))
        return original(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(Axes, "text", record)
    assert plots.suppression_matrix_figure(rows, doctored) is not None
    for variant in ("kn", "random"):
        for (source, target) in suppression_matrix(rows, variant):
            cell = find(doctored, variant, f"suppress@{source}>{target}")
            expected = (f"{cell.mean * 100:+.0f}%\n[{cell.lo * 100:+.0f}, {cell.hi * 100:+.0f}]\n"
                        f"n={cell.n}").replace("-", "−")
            assert expected in texts, (variant, source, target)
    texts.clear()
    plots.suppression_matrix_figure(rows)  # studied before the cells' aggregates were stored
    for mean, n in suppression_matrix(rows, "kn").values():
        assert f"{mean * 100:+.0f}%\nn={n}".replace("-", "−") in texts
