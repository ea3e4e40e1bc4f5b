"""`kneuron study robustness --run ATLAS` and the report's section for it, on an atlas of the tiny Llama."""

from __future__ import annotations

import math
import re
from html import escape

import pytest
from typer.testing import CliRunner

from kneuron import cli
from kneuron.report import ReportData, render_report
from kneuron.report.edit_robustness import edit_robustness_section
from kneuron.store import Atlas, model_identity, run
from kneuron.store.study_runs import run_studies_on_atlas
from kneuron.studies.edit_robustness import STUDY
from kneuron.studies.edit_robustness_summary import TABLE_SETS, robustness_summary, summary_table
from kneuron.studies.intervals import find, format_interval
from studies.conftest import tiny_facts
from tiny_models import tiny_lm

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli.app, list(args), env={"COLUMNS": "200"})


def test_study_robustness_stores_what_the_library_computes(atlas_path, fake_load):
    result = invoke("study", "robustness", "--run", str(atlas_path), "--seed", "1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Edit robustness (kn):" in out and "Edit robustness (kn_signed):" in out
    assert "own prompts" in out and "held-out paraphrases" in out and "held-out, all-prompt neurons" in out
    assert "reverse: t' → subject" in out and "neighbourhood" in out
    with Atlas.open(atlas_path, read_only=True) as atlas:
        stored = atlas.results(STUDY)
        aggregates = atlas.aggregates(STUDY)
        coverage = atlas.coverage()[STUDY]
        done = atlas.done_coverage()
    assert coverage == done
    lm = tiny_lm("llama")
    identity = model_identity(lm)["fingerprint"]
    direct = run_studies_on_atlas(atlas_path, [STUDY], {"seed": 1}, lm=lm, write=False)[0].rows
    assert model_identity(lm)["fingerprint"] == identity
    assert [(r["variant"], r["fact_id"], r["metric"]) for r in stored] == \
        [(r["variant"], r["fact_id"], r["metric"]) for r in direct]
    assert [r["value"] for r in stored] == pytest.approx([r["value"] for r in direct], nan_ok=True, rel=1e-6)
    prefixes = dict(TABLE_SETS)
    for label, count, *_ in summary_table(stored, "kn"):  # each printed cell is the stored interval and n
        metric = f"{prefixes[label]}_new_beats_old" if label in prefixes else "reverse_new_beats_owner"
        interval = find(aggregates, "kn", metric)
        assert interval.n == count and not math.isfinite(interval.p)  # no control: no p
        cell = format_interval(interval, percent=True, signed=False)
        assert re.search(rf"{re.escape(label)}\s+│?\s*{re.escape(cell)}", out), label
    refined = find(aggregates, "kn", "refined_equal")  # the recomputed refined sets
    assert "refined sets recomputed = the atlas's" in out and format_interval(refined, percent=True) in out
    s = robustness_summary(stored, "kn")
    assert f"{s['edited']:.0f} of {s['facts']:.0f} facts updated" in out


def test_study_robustness_says_which_tests_cannot_run(tmp_path, fake_load):
    path = tmp_path / "no-capital.sqlite"
    facts = [f for f in tiny_facts() if f.relation != "capital"]
    run(tiny_lm("llama"), facts, path, steps=3, known_only=False, progress=False, share=0.3)
    result = invoke("study", "robustness", "--run", str(path))
    assert result.exit_code == 0, result.output
    assert "note: no fact of a one-to-one relation (capital, chemical_symbol, currency): the symmetry test is " \
           "skipped." in result.output
    assert "reverse: t'" not in result.stdout and "own prompts" in result.stdout


def test_study_robustness_refuses_an_atlas_without_done_facts(tmp_path, fake_load):
    path = tmp_path / "empty.sqlite"
    run(tiny_lm("llama"), tiny_facts()[:2], path, steps=3, known_only=True, progress=False, min_share=0.99)
    with Atlas.open(path, read_only=True) as atlas:
        assert not atlas.facts()  # the tiny model knows none of them
    result = invoke("study", "robustness", "--run", str(path))
    assert result.exit_code == 1
    assert "has no computed facts yet" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not fake_load


def test_report_section_after_the_update_table(atlas_path, fake_load):
    assert invoke("study", "robustness", "--run", str(atlas_path)).exit_code == 0
    data = ReportData.from_atlas(atlas_path)
    html = render_report(data)
    assert "<h3>Edits under Niu et al.'s tests</h3>" in html
    assert html.index("Edits under Niu") < (html.index("<h2>Languages") if "<h2>Languages" in html else len(html))
    rows = data.rows(STUDY)
    section = edit_robustness_section(rows, data.aggregates[STUDY])
    assert section in html and "no interval stored" not in section
    for metric in ("own_p_rose", "own_top1_became", "alias_new_beats_old", "neighborhood"):
        interval = data.interval(STUDY, "kn", metric)
        assert interval.n and escape(format_interval(interval, percent=True, signed=False)) in section, metric
    assert "no interval stored" in edit_robustness_section(rows)  # an atlas studied before they were stored
    assert "at most 5.2% of BLiMP" in section
    assert edit_robustness_section([]) == "" and "Edits under Niu" not in render_report(ReportData({}, n_facts=3))
    # the section follows the editing section's update table when both are there
    both = render_report(ReportData({"editing": [{"variant": "kn", "relation": "capital", "fact_id": "capital:France",
                                                  "metric": "edited", "value": 1.0}], STUDY: rows}, n_facts=3))
    assert both.index("<h3>Updating facts</h3>") < both.index("Edits under Niu")
    assert both.count("Editing knowledge") == 1
