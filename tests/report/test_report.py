"""The HTML report: self-contained, numbers equal to the studies' summaries, and figures that render in headless
Chromium (Debian's ``chromium``; ``make test`` installs it when missing, otherwise these tests skip)."""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from kneuron.attribution import Neuron
from kneuron.report import ReportData, headline, headline_line, plots, render_report, write_report
from kneuron.studies import summarize
from kneuron.studies.registry import studies_in, study_named
from kneuron.studies.studies import run_studies
from studies.conftest import tiny_facts, tiny_neurons
from tiny_models import tiny_lm

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SENTENCES = (["Paris is the capital of France .", "France has its capital in Paris ."],
             ["France is a country in Europe .", "France is big ."])


@pytest.fixture(scope="module")
def data() -> ReportData:
    torch.set_num_threads(1)
    lm = tiny_lm("llama", layers=6, neurons=16)
    facts = tiny_facts()
    neurons = tiny_neurons(facts)
    neurons[facts[0].id].append(Neuron(5, 2, 0.3))  # one neuron in the top third of the layers
    baseline = {f.id: [Neuron(1, 7), Neuron(3, 0)] for f in facts}
    coarse = {f.id: [[Neuron(0, 9)] if p.prefix.rstrip().endswith(" is") else [] for p in f.prompts()]
              for f in facts}
    results = run_studies(lm, facts, neurons, baseline, sentences=lambda f: SENTENCES, seed=1, coarse_by_fact=coarse)
    return ReportData(results, {"model": "tiny-llama", "steps": 20}, len(facts), title="Tiny <report>")


def test_study_names():
    assert [s.name for s in studies_in("paper")] == ["suppress_amplify", "generic", "layers", "discrimination"]
    assert study_named("suppress-amplify").name == "suppress_amplify"
    assert study_named("robustness").name == study_named("edit_robustness").name == "edit_robustness"
    with pytest.raises(Exception, match="Unknown study"):
        study_named("nope")


def test_headline_numbers_are_the_study_summaries(data):
    h = headline(data)
    sa, disc = data.results["suppress_amplify"], data.results["discrimination"]
    assert h.facts == 8
    assert h.suppress == pytest.approx(summarize(sa, "kn", "suppress").mean * 100)
    assert h.amplify == pytest.approx(summarize(sa, "kn", "amplify").mean * 100)
    assert h.top_third == pytest.approx(100 / 21)  # 21 neurons, one of them in layers 4..5
    assert h.auc_kn == pytest.approx(np.mean([r["value"] for r in disc if r["variant"] == "kn"
                                              and r["metric"] == "auc"]))
    line = headline_line("runs/x.html", data)
    # no stored aggregates (a ReportData made in memory): each figure carries its n, no interval
    pattern = (r"report=runs/x\.html facts=8 suppress=[+-]\d+\.\d\d% n=8 amplify=[+-]\d+\.\d\d% n=8 "
               r"top_third=\d+\.\d% auc_kn=\d\.\d{3} n=8 auc_activation=\d\.\d{3} n=8")
    assert re.fullmatch(pattern, line), line
    assert f"suppress={h.suppress:+.2f}%" in line


def test_headline_of_an_empty_run_says_nan():
    line = headline_line("r.html", ReportData({}, {}, 0))
    assert line == "report=r.html facts=0 suppress=nan amplify=nan top_third=nan auc_kn=nan auc_activation=nan"


@pytest.fixture(scope="module")
def report_file(data, tmp_path_factory):
    return write_report(data, tmp_path_factory.mktemp("report") / "sub" / "report.html")


def test_report_is_self_contained_and_escaped(report_file):
    text = report_file.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "Tiny &lt;report&gt;" in text
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) >= 6 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"(href|src)=\"(https?:|//|file:)", text) and "<script" not in text
    for needed in ("Suppress / amplify", "Generic neurons", "L0.N3", "Layer distribution", "Discrimination",
                   "-29.03%", "+31.17%", "coarse in more than", "L0.N9 on its own", "<code>is</code> "):
        assert needed in text


def test_missing_studies_say_how_to_run_them():
    text = render_report(ReportData({}, {}, 0))  # and the same again: no state kept between renders
    assert render_report(ReportData({}, {}, 0)) == text
    assert "kneuron study suppress-amplify" in text and "kneuron study discrimination" in text


def test_figures_are_png_and_empty_input_gives_none(data):
    png = plots.layers_figure(data.results["layers"])
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.width > 300
    for draw in (plots.suppress_amplify_figure, plots.other_relations_figure, plots.layers_figure,
                 plots.layers_heatmap, plots.discrimination_figure):
        assert draw([]) is None
    assert plots.generic_figure([], "L0.N3") is None


def test_generic_table_splits_unrelated_and_member_facts(data):
    table = plots.generic_by_word(data.results["generic"], "L0.N3")
    assert "is" in table and table["is"]["n_members"] == 8 and table["is"]["n_unrelated"] == 0
    assert math.isnan(table["is"]["unrelated"])


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("chromium is not installed (make test installs it: apt-get install -y chromium)")
    return path


def test_figures_render_in_headless_chromium(report_file, tmp_path):
    chromium = _chromium()
    # a copy with a probe script that records, after load, each image's decoded width into the DOM (the report
    # itself has no script); one Chromium run dumps that DOM and takes a screenshot
    probe = report_file.read_text(encoding="utf-8").replace(
        "</body>", "<script>window.addEventListener('load', () => { for (const img of document.images) "
                   "img.setAttribute('data-natural-width', img.naturalWidth); "
                   "document.body.setAttribute('data-loaded', document.images.length); });</script></body>")
    probed = tmp_path / "probe.html"
    probed.write_text(probe, encoding="utf-8")
    shot = tmp_path / "shot.png"
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
             f"--screenshot={shot}", "--window-size=1100,2400", "--dump-dom"]
    dom = subprocess.run([chromium, *flags, probed.as_uri()], capture_output=True, text=True, timeout=60).stdout
    widths = [int(w) for w in re.findall(r'data-natural-width="(\d+)"', dom)]
    assert re.search(r'data-loaded="(\d+)"', dom), dom[:500]
    assert len(widths) == len(re.findall(r"<img ", report_file.read_text(encoding="utf-8"))) >= 6
    assert all(w > 0 for w in widths), widths
    # the screenshot is not blank, and has the figures' colours in it
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 50  # text, tables and plots, not one flat colour
    bars = np.abs(pixels.astype(int) - np.array([0x1F, 0x77, 0xB4])).sum(axis=1) < 30  # the KN blue of the bars
    assert bars.sum() > 500


def test_headline_line_can_use_the_signed_auc(data):
    h = headline(data)
    assert math.isfinite(h.auc_kn_signed)
    assert f"auc_kn={h.auc_kn_signed:.3f} " in headline_line("r.html", data, signed_auc=True)
