"""`kneuron study interactions --run ATLAS` and the report's section, on an atlas made from the tiny Llama."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from kneuron import cli
from kneuron.interventions.edits import fingerprint
from kneuron.report import ReportData
from kneuron.store import Atlas
from kneuron.studies.interactions import interactions_study
from kneuron.studies.intervals import find, format_interval
from tiny_models import tiny_lm

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli.app, list(args), env={"COLUMNS": "200"})


def test_study_interactions_stores_what_the_library_computes(atlas_path, fake_load):
    result = invoke("study", "interactions", "--run", str(atlas_path), "--model", "tiny-llama", "--cap", "3",
                    "--max-k", "4", "--tolerance", "0.05", "--seed", "2", "--facts", "5")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Neuron interactions of 5 facts (top 3 neurons: up to 3 pairs per fact)" in out
    assert " s per fact" in " ".join(out.split())  # the caption: seconds per studied fact
    with Atlas.open(atlas_path, read_only=True) as atlas:
        assert atlas.studies() == ["interactions"]
        stored = atlas.results("interactions")
        facts, neurons = atlas.facts()[:5], atlas.all_refined()
        coverage = atlas.coverage()["interactions"]
        aggregates = atlas.aggregates("interactions")
    lm = tiny_lm("llama")
    # the CLI's model is left as loaded: the same weights as a fresh tiny Llama
    assert fingerprint(fake_load["tiny-llama"], fresh=True)["weights"] == fingerprint(lm, fresh=True)["weights"]
    direct = interactions_study(lm, facts, neurons, cap=3, max_k=4, tolerance=0.05, seed=2)
    assert [(r["variant"], r["fact_id"], r["metric"]) for r in stored] == \
        [(r["variant"], r["fact_id"], r["metric"]) for r in direct]
    assert [r["value"] for r in stored] == pytest.approx([r["value"] for r in direct], nan_ok=True, rel=1e-5)
    assert coverage["facts"] == 5
    stored_all = find(aggregates, "kn", "suppress_all")
    assert stored_all.n == 5 and format_interval(stored_all, percent=True) in out  # the stored interval, whole
    html_rows = ReportData.from_atlas(atlas_path).rows("interactions")
    assert len(html_rows) == len(stored)


def test_study_interactions_refuses_an_atlas_without_facts(tmp_path, fake_load):
    from kneuron.store import run
    from studies.conftest import tiny_facts

    path = tmp_path / "empty.sqlite"
    run(tiny_lm("llama"), tiny_facts()[:0], path, steps=3, known_only=False, progress=False)
    result = invoke("study", "interactions", "--run", str(path))
    assert result.exit_code == 1 and "has no computed facts yet" in result.output
    assert "Traceback" not in result.output and not fake_load


def test_report_has_the_section_after_the_study(atlas_path, fake_load, tmp_path):
    assert invoke("study", "interactions", "--run", str(atlas_path), "--model", "tiny-llama").exit_code == 0
    out = tmp_path / "report.html"
    result = invoke("report", "--run", str(atlas_path), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "<h2>Neuron interactions</h2>" in out.read_text()


def test_a_narrow_terminal_gets_the_overall_figures_one_per_line(atlas_path, fake_load):
    result = runner.invoke(cli.app, ["study", "interactions", "--run", str(atlas_path), "--model", "tiny-llama"],
                           env={"COLUMNS": "80", "TTY_COMPATIBLE": "1", "NO_COLOR": "1"})  # a terminal
    assert result.exit_code == 0, result.output
    with Atlas.open(atlas_path, read_only=True) as atlas:
        stored = find(atlas.aggregates("interactions"), "kn", "suppress_all")
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stdout)  # bold and italics, not colours
    flat = " ".join(out.split())
    assert "all facts" in flat and "per relation: a wider terminal" in flat
    line = next(text for text in out.splitlines() if "Δ, all knowledge neurons" in text)
    assert format_interval(stored, percent=True) in line  # the stored overall interval, whole, on its own line
    assert max(len(text) for text in out.splitlines()) <= 80
    piped = runner.invoke(cli.app, ["study", "interactions", "--run", str(atlas_path), "--model", "tiny-llama"],
                          env={"COLUMNS": "80"})  # a pipe is never narrow: the per-relation table, whole
    assert "per relation: a wider terminal" not in " ".join(piped.stdout.split()) and "…" not in piped.stdout
