"""`kneuron study NAME --run ATLAS` and `kneuron report --run ATLAS` on an atlas made from a tiny model."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from kneuron import cli
from kneuron.report import headline
from kneuron.store import Atlas, run
from kneuron.studies.registry import registered_studies
from kneuron.studies.studies import run_studies
from studies.conftest import tiny_facts
from tiny_models import tiny_lm

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli.app, list(args), env={"COLUMNS": "160"})


def test_study_all_then_report(atlas_path, fake_load):
    result = invoke("study", "all", "--run", str(atlas_path), "--seed", "3", "--other-facts", "2")
    assert result.exit_code == 0, result.output
    assert "suppress KN" in result.stdout and "top third of the layers" in result.stdout
    assert list(fake_load) == ["tiny-llama"]  # the model the atlas names
    with Atlas.open(atlas_path, read_only=True) as atlas:
        assert atlas.studies() == ["discrimination", "generic", "layers", "suppress_amplify"]
        stored = {study: atlas.results(study) for study in atlas.studies()}
        facts, neurons = atlas.facts(), atlas.all_refined()
        baseline = {f.id: atlas.baseline_neurons(f.id) for f in facts}
    assert any(neurons.values())
    direct = run_studies(tiny_lm("llama"), facts, neurons, baseline, seed=3, other_facts=2,
                         studies=("suppress_amplify", "layers"))
    for study, rows in direct.items():
        assert [(r["variant"], r["fact_id"], r["metric"]) for r in stored[study]] == \
            [(r["variant"], r["fact_id"], r["metric"]) for r in rows]
        assert [r["value"] for r in stored[study]] == pytest.approx([r["value"] for r in rows], nan_ok=True)

    result = invoke("report", "--run", str(atlas_path))
    assert result.exit_code == 0, result.output
    html = atlas_path.with_suffix(".html")
    assert html.is_file() and "data:image/png;base64," in html.read_text(encoding="utf-8")
    last = result.stdout.strip().splitlines()[-1]
    tail = r" \[-?\d+\.\d+, -?\d+\.\d+\] n=\d+"  # the stored interval and n
    assert re.fullmatch(rf"report={re.escape(str(html))} facts=8 suppress=\S+%{tail} amplify=\S+%{tail} "
                        rf"top_third=\S+%{tail} auc_kn=\S+{tail} auc_activation=\S+{tail}", last), last
    from kneuron.report import ReportData, headline_line

    data = ReportData.from_atlas(atlas_path)
    assert last == headline_line(html, data, signed_auc=True)  # sign-aligned AUC by default
    raw = invoke("report", "--run", str(atlas_path), "--raw-auc").stdout.strip().splitlines()[-1]
    assert raw == headline_line(html, data, signed_auc=False)

    # --json: the findings the docs' findings page renders, the atlas's own numbers
    out = atlas_path.parent / "data" / "findings.json"
    assert invoke("report", "--run", str(atlas_path), "--json", str(out)).exit_code == 0
    found = json.loads(out.read_text(encoding="utf-8"))
    assert found["command"] == f"kneuron report --run {atlas_path} --json {out}" and found["facts"] == 8
    h = headline(data)
    assert found["headline"]["suppress_percent"] == pytest.approx(h.suppress)
    assert found["headline"]["auc_kn_signed"] == pytest.approx(h.auc_kn_signed)
    tables = {t["title"]: t for t in found["tables"]}
    assert tables["Headline (8 facts)"]["rows"][0][1:3] == [pytest.approx(h.suppress), -29.03]
    # each headline figure with its stored interval, n and paired p (the report's text)
    head = tables["Headline (8 facts)"]["rows"]
    assert head[0][3] == data.stat("suppress_amplify", "kn", "suppress") and "[" in head[0][3]
    assert "vs random" in head[0][3]
    assert head[5][3] == data.stat("discrimination", "baseline", "auc", percent=False, digits=3)
    with Atlas.open(atlas_path, read_only=True) as atlas:
        aggregates = atlas.aggregates()
    expected = [[s.name, m, v] for s in registered_studies() if data.rows(s.name)
                for m, v in s.measures(data.rows(s.name), [a for a in aggregates if a["study"] == s.name])]
    assert tables["Every study's measures"]["rows"] == expected and expected
    assert len(found["aggregates"]) == len(aggregates)


def test_one_study_replaces_only_its_rows(atlas_path, fake_load):
    assert invoke("study", "layers", "--run", str(atlas_path)).exit_code == 0
    assert invoke("study", "layers", "--run", str(atlas_path)).exit_code == 0
    with Atlas.open(atlas_path, read_only=True) as atlas:
        assert atlas.studies() == ["layers"]
        first = atlas.results("layers")
    assert len(first) == len({(r["variant"], r["relation"], r["metric"]) for r in first})  # not written twice


def test_another_model_is_refused(atlas_path, fake_load):
    result = invoke("study", "layers", "--run", str(atlas_path), "--model", "tiny-gpt2")
    assert result.exit_code == 1
    assert "another model" in result.output and "--model tiny-llama" in result.output


def test_bad_names_and_paths(tmp_path, atlas_path, fake_load):
    result = invoke("study", "everything", "--run", str(atlas_path))
    assert result.exit_code == 2 and "No such command 'everything'" in result.output  # click's usage error
    assert "Traceback" not in result.output
    result = invoke("study", "all", "--run", str(tmp_path / "missing.sqlite"))
    assert result.exit_code == 1 and "No atlas" in result.output
    result = invoke("report", "--run", str(tmp_path / "missing.sqlite"))
    assert result.exit_code == 1 and "No atlas" in result.output


def test_report_before_any_study_says_what_to_run(atlas_path):
    out = atlas_path.parent / "elsewhere" / "r.html"
    result = invoke("report", "--run", str(atlas_path), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.is_file() and not atlas_path.with_suffix(".html").exists()
    assert "kneuron study all" in result.output
    assert result.stdout.strip().splitlines()[-1].endswith("auc_kn=nan auc_activation=nan")


def test_studies_and_report_run_on_a_cheaper_estimators_atlas(tmp_path, fake_load):
    """The paper's studies and the report take any estimator's atlas: a gxa atlas's studies are those of its own
    refined neurons, and the report says which estimator made them."""
    path = tmp_path / "gxa.sqlite"
    run(tiny_lm("llama"), tiny_facts(), path, estimator="gxa", known_only=False, progress=False, share=0.3)
    result = invoke("study", "all", "--run", str(path), "--seed", "3", "--other-facts", "2")
    assert result.exit_code == 0, result.output
    with Atlas.open(path, read_only=True) as atlas:
        assert atlas.params["estimator"] == "gxa"
        stored = atlas.results("suppress_amplify")
        facts, neurons = atlas.facts(), atlas.all_refined()
        baseline = {f.id: atlas.baseline_neurons(f.id) for f in facts}
    assert any(neurons.values())
    direct = run_studies(tiny_lm("llama"), facts, neurons, baseline, seed=3, other_facts=2,
                         studies=("suppress_amplify",))["suppress_amplify"]
    assert [r["value"] for r in stored] == pytest.approx([r["value"] for r in direct], nan_ok=True)
    result = invoke("report", "--run", str(path))
    assert result.exit_code == 0, result.output
    # the run's parameters are in the folded table at the end of the report
    assert '<code>params.estimator</code></td><td class="l">gxa</td>' in path.with_suffix(".html").read_text(
        encoding="utf-8")
