"""`kneuron study estimators --run ATLAS` on a tiny atlas: stored rows equal the library's, the table, refusals,
a refusing estimator skipped with a note, and the report's section with and without results."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch
from typer.testing import CliRunner

from kneuron import cli
from kneuron.attribution import GradientTimesActivation, IntegratedGradients
from kneuron.attribution.estimators import ESTIMATORS
from kneuron.errors import KneuronError
from kneuron.report import ReportData, render_report
from kneuron.report.estimators import TITLE, estimators_section
from kneuron.store import Atlas
from kneuron.studies.estimator_agreement import estimator_agreement
from kneuron.studies.intervals import find, format_interval
from tiny_models import tiny_lm

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli.app, list(args), env={"COLUMNS": "200"})


def set_params(path, **changes) -> None:
    db = sqlite3.connect(path)
    try:
        params = json.loads(db.execute("SELECT value FROM meta WHERE key = 'params'").fetchone()[0])
        params.update(changes)
        db.execute("UPDATE meta SET value = ? WHERE key = 'params'", (json.dumps(params),))
        db.commit()
    finally:
        db.close()


def test_study_estimators_stores_the_library_rows(atlas_path, fake_load):
    result = invoke("study", "estimators", "--run", str(atlas_path), "--estimators", "ig,gxa", "--facts", "3",
                    "--seed", "4")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    exact = next(line for line in lines if line.lstrip().startswith("ig-exact"))
    assert "1.000" in exact and exact.count("1.00") >= 3  # spearman, recall, Jaccard of IG against itself
    assert any(line.lstrip().startswith("gxa") for line in lines)
    assert any(line.lstrip().startswith("ig (atlas)") for line in lines)
    with Atlas.open(atlas_path, read_only=True) as atlas:
        assert atlas.studies() == ["estimators"]
        stored = atlas.results("estimators")
        facts = atlas.facts()[:3]
        scores = {f.id: atlas.prompt_scores(f.id) for f in facts}
        kept = {f.id: atlas.prompt_sparse(f.id)[0][0] for f in facts}
        refined, params = atlas.all_refined(), atlas.params
        aggregates = atlas.aggregates("estimators")
        assert atlas.coverage()["estimators"]["facts"] == 3
    gxa = next(line for line in lines if line.lstrip().startswith("gxa"))  # the stored intervals, n and p vs IG
    for metric, percent in (("top_recall", False), ("refined_jaccard", False), ("suppress", True)):
        interval = find(aggregates, "gxa", metric)
        assert interval.n == 3 and format_interval(interval, percent=percent, digits=2 if percent else 3) in gxa
    assert {r["fact_id"] for r in stored if r["fact_id"]} == {f.id for f in facts}
    direct = estimator_agreement(
        tiny_lm("llama"), facts, scores, refined,
        {"ig-exact": IntegratedGradients(3, "right", "prob"), "gxa": GradientTimesActivation()},
        threshold=params["threshold"], share=params["share"], kept=kept, seed=4)
    timing = {"seconds_per_prompt"}
    assert [(r["variant"], r["fact_id"], r["metric"]) for r in stored if r["metric"] not in timing] == \
        [(r["variant"], r["fact_id"], r["metric"]) for r in direct if r["metric"] not in timing]
    assert [r["value"] for r in stored if r["metric"] not in timing] == \
        pytest.approx([r["value"] for r in direct if r["metric"] not in timing], nan_ok=True)

    # the report shows its section
    html_path = atlas_path.with_suffix(".html")
    assert invoke("report", "--run", str(atlas_path)).exit_code == 0
    html = html_path.read_text(encoding="utf-8")
    section = html[html.index(TITLE):]
    assert "ig-exact" in section and "gxa" in section and "data:image/png;base64," in section
    assert "on 3 of the atlas&#x27;s 8 done facts" in section or "on 3 of the atlas's 8 done facts" in section


def test_default_estimators_and_a_refusing_one(atlas_path, fake_load, monkeypatch):
    class Refusing(GradientTimesActivation):
        name = "refusing"

        def attribute(self, lm, prompts, answer=None, *, layers=None, on_prompt=None):
            raise KneuronError("refusing does not support llama models.")

    monkeypatch.setitem(ESTIMATORS, "refusing", Refusing)
    result = invoke("study", "estimators", "--run", str(atlas_path), "--facts", "2")
    assert result.exit_code == 0, result.output
    assert "skipped refusing: refusing does not support llama models." in result.stderr
    with Atlas.open(atlas_path, read_only=True) as atlas:
        variants = {r["variant"] for r in atlas.results("estimators")}
    # every registered one but ig (gxa, lpi: tiny Llama supports both) and the refusing one, and ig-gauss5
    assert variants == {"gxa", "lpi", "ig-gauss5", "ig", "params"}


@pytest.mark.parametrize(("changes", "says"), [({"estimator": "gxa"}, "the 'gxa' estimator"),
                                                ({"estimator": "ig", "screen": 2}, "screened IG")])
def test_an_atlas_not_made_with_exact_ig_is_refused(atlas_path, fake_load, changes, says):
    set_params(atlas_path, **changes)
    result = invoke("study", "estimators", "--run", str(atlas_path))
    assert result.exit_code == 1
    assert says in result.output and "exact integrated gradients" in result.output
    assert "Traceback" not in result.output
    assert result.output.count("error:") == 1
    with Atlas.open(atlas_path, read_only=True) as atlas:
        assert atlas.studies() == []
    assert not fake_load  # refused before loading the model


def test_bad_estimator_names(atlas_path, fake_load):
    result = invoke("study", "estimators", "--run", str(atlas_path), "--estimators", "gxa,nope")
    assert result.exit_code == 1 and "Unknown estimator 'nope'" in result.output
    result = invoke("study", "estimators", "--run", str(atlas_path), "--estimators", " , ")
    assert result.exit_code == 1 and "names none" in result.output


def test_report_section_with_and_without_results():
    torch.set_num_threads(1)
    empty = render_report(ReportData({}, {}, 0))
    assert TITLE in empty and "Not run: <code>kneuron study estimators --run ATLAS</code>" in empty
    rows = [{"study": "estimators", "variant": v, "relation": "r", "fact_id": f, "metric": m, "value": x}
            for f in ("a", "b") for v, m, x in (
                ("gxa", "prompts", 3), ("gxa", "spearman", 0.5 if f == "a" else 0.7), ("gxa", "top_recall", 0.4),
                ("gxa", "refined_jaccard", 0.25), ("gxa", "suppress", -0.2), ("gxa", "suppress_ig", -0.4),
                ("gxa", "suppress_random", 0.01), ("ig", "neurons", 2), ("ig", "suppress", -0.4))]
    rows += [{"study": "estimators", "variant": "gxa", "relation": "", "fact_id": "", "metric": "seconds_per_prompt",
              "value": 0.5}, {"study": "estimators", "variant": "ig", "relation": "", "fact_id": "",
                              "metric": "seconds_per_prompt", "value": 10.0}]
    html = estimators_section(rows, {"facts": 2}, 5)
    assert "0.600 (all neurons)" in html and "0.40" in html and "0.25" in html
    assert "-20.00%" in html and "-40.00%" in html and "20.0" in html  # x faster: 10 / 0.5
    assert "on 2 of the atlas's 5 done facts" in html and "data:image/png;base64," in html
    full = render_report(ReportData({"estimators": rows}, {}, 5))
    assert "Not run: <code>kneuron study estimators" not in full and "0.600 (all neurons)" in full


def test_report_specificity_table_shows_own_and_other_suppression_with_intervals():
    from kneuron.studies.catalog.estimators import estimator_controls
    from kneuron.studies.intervals import aggregate_rows, find, format_interval

    def one(variant, fact, metric, value):
        return {"study": "estimators", "variant": variant, "relation": "r" if fact else "", "fact_id": fact,
                "metric": metric, "value": value}

    rows = [one(v, f, m, x) for i, f in enumerate(("a", "b", "c")) for v, m, x in (
        ("gxa", "prompts", 3), ("gxa", "neurons", 6), ("gxa", "identical", float(i == 0)),
        ("gxa", "refined_jaccard", 0.5), ("gxa", "suppress", -0.9), ("gxa", "suppress_other", -0.2 - 0.1 * i),
        ("gxa", "generic_fraction", 0.5), ("ig", "neurons", 4), ("ig", "suppress", -0.8),
        ("ig", "suppress_other", -0.1), ("ig", "generic_fraction", 0.25))]
    rows += [one("gxa", "", "generic_neurons", 2), one("gxa", "", "most_shared", 2 / 3),
             one("ig", "", "generic_neurons", 1), one("ig", "", "most_shared", 1 / 3)]
    aggregates = aggregate_rows(rows, estimator_controls(rows))
    html = estimators_section(rows, {"facts": 3}, 3, aggregates=aggregates)
    other = format_interval(find(aggregates, "gxa", "suppress_other"), percent=True)
    assert other.startswith("−30.0% [") and "p = 0.25 vs ig" in other  # exact sign-flip test over 3 facts
    assert other in html and format_interval(find(aggregates, "ig", "suppress_other"), percent=True) in html
    table = html[html.index("refined neurons / fact"):html.index("Specificity.")]
    assert "1 of 3" in table and "6.0" in table and "4.0" in table and "50%" in table and "25%" in table
    assert "67%" in table and "33%" in table
    without = estimators_section(rows, {"facts": 3}, 3)  # no stored aggregates: the plain means
    assert "-30.0%" in without and "-10.0%" in without
