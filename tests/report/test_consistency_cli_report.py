"""`kneuron study consistency --run ATLAS` (no model), its line in `kneuron atlas --fact`, and the report's Consistency
section, on atlases made from the tiny Llama."""

from __future__ import annotations

import io
from html import escape

import pytest
from PIL import Image
from typer.testing import CliRunner

from kneuron import cli
from kneuron.report import ReportData, render_report
from kneuron.report.consistency import consistency_figure, consistency_section, relations_figure
from kneuron.store import Atlas, run
from kneuron.studies.consistency import (
    FactConsistency,
    consistency_rows,
    consistency_study,
    fact_values,
    split_comparison,
    split_rows,
    summary_values,
)
from kneuron.studies.intervals import aggregate_rows, find, format_interval
from studies.conftest import tiny_facts
from tiny_models import tiny_lm

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli.app, list(args), env={"COLUMNS": "200"})


def test_study_consistency_stores_and_prints_the_library_rows(atlas_path, fake_load):
    result = invoke("study", "consistency", "--run", str(atlas_path))
    assert result.exit_code == 0, result.output
    assert not fake_load  # no model loaded
    with Atlas.open(atlas_path, read_only=True) as atlas:
        stored = atlas.results("consistency")
        aggregates = atlas.aggregates("consistency")
        assert atlas.coverage()["consistency"] == atlas.done_coverage()
    with Atlas.open(atlas_path) as atlas:
        direct = consistency_study(atlas, write=False)
    assert [(r["variant"], r["fact_id"], r["metric"]) for r in stored] == \
        [(r["variant"], r["fact_id"], r["metric"]) for r in direct]
    assert [r["value"] for r in stored] == pytest.approx([r["value"] for r in direct], nan_ok=True)
    out = result.stdout
    assert "Consistency of 8 facts across their prompts" in out
    for relation in ("capital", "language", "continent"):
        values = summary_values(stored, "relation", relation)
        line = next(line for line in out.splitlines() if line.strip().startswith(relation))
        jaccard, share = find(aggregates, "fact", "jaccard", relation), find(aggregates, "fact", "consistent", relation)
        assert jaccard.mean == pytest.approx(values["jaccard"]) and jaccard.n == values["facts"]
        assert format_interval(jaccard) in line  # the stored interval and n
        assert format_interval(share, percent=True, signed=False) in line
        assert share.mean == pytest.approx(1 - values["inconsistent_share"])
    otsu = summary_values(stored, "otsu")
    assert f"Otsu threshold on the Jaccard (the consistency score): {otsu['threshold']:.3f} over 8 facts" in out
    assert f"no suppress/amplify rows yet: run `kneuron study suppress-amplify --run {atlas_path}`" in out
    assert f"no editing rows yet: run `kneuron study editing --run {atlas_path}`" in out


def test_the_fact_line_before_and_after_the_study(atlas_path):
    before = invoke("atlas", "--run", str(atlas_path), "--fact", "capital:France")
    assert before.exit_code == 0, before.output
    assert f"consistency: not computed yet (`kneuron study consistency --run {atlas_path}`)" in before.stdout
    with Atlas.open(atlas_path) as atlas:
        rows = consistency_study(atlas)
    values, otsu = fact_values(rows), summary_values(rows, "otsu")
    for fact in tiny_facts():
        after = invoke("atlas", "--run", str(atlas_path), "--fact", fact.id)
        assert after.exit_code == 0, after.output
        mine = values[fact.id]
        verdict = "consistent" if mine["consistent"] == 1.0 else "inconsistent"
        assert (f"consistency: Jaccard {mine['jaccard']:.2f}, rank corr {mine['rank_correlation']:.2f}, {verdict} "
                f"(Otsu threshold {otsu['threshold']:.2f} over 8 facts)") in after.stdout
    assert {v["consistent"] for v in values.values()} == {0.0, 1.0}  # both lines shown
    with Atlas.open(atlas_path) as atlas:  # rows of a study that ran before capital:France was done
        atlas.write_results("consistency", [r for r in rows if r["fact_id"] != "capital:France"])
    stale = invoke("atlas", "--run", str(atlas_path), "--fact", "capital:France")
    assert "consistency: this fact was not done when the study ran; run `kneuron study consistency --run" in \
        stale.stdout


def test_missing_atlas_and_no_done_facts_are_one_line_errors(tmp_path):
    missing = tmp_path / "missing.sqlite"
    result = invoke("study", "consistency", "--run", str(missing))
    assert result.exit_code == 1 and "No atlas at" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    empty = tmp_path / "empty.sqlite"
    run(tiny_lm("llama"), tiny_facts()[:2], empty, steps=2, known_only=True, progress=False)
    result = invoke("study", "consistency", "--run", str(empty))
    assert result.exit_code == 1 and "has no computed facts yet" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_a_none_atlas_gets_the_jaccard_and_one_line_about_the_rank_correlation(tmp_path):
    path = tmp_path / "none.sqlite"
    run(tiny_lm("llama"), tiny_facts(), path, steps=3, known_only=False, progress=False, share=0.3, keep_scores="none")
    result = invoke("study", "consistency", "--run", str(path))
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "rank correlation: not available" in line]
    assert len(notes) == 1 and "--keep-scores none" in notes[0]
    with Atlas.open(path, read_only=True) as atlas:
        overall = summary_values(atlas.results("consistency"))
    assert overall["facts"] == 8 and 0 < overall["jaccard"] < 1
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("all"))
    assert f"{overall['jaccard']:.3f}" in line and "–" in line


def test_with_suppress_amplify_rows_the_classes_are_compared(atlas_path, fake_load):
    assert invoke("study", "suppress-amplify", "--run", str(atlas_path), "--other-facts", "1").exit_code == 0
    result = invoke("study", "consistency", "--run", str(atlas_path))
    assert result.exit_code == 0, result.output
    with Atlas.open(atlas_path, read_only=True) as atlas:
        rows, suppress = atlas.results("consistency"), atlas.results("suppress_amplify")
        aggregates = atlas.aggregates("consistency")
    shown = []
    for metric in ("suppress", "amplify"):
        split = split_comparison(rows, suppress, "kn", metric)
        assert split["consistent"][1] + split["inconsistent"][1] > 0
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(f"{metric} KN"))
        for side, (mean, n) in split.items():  # each class's mean: the stored interval and n of the same facts
            if n:
                stored = find(aggregates, f"suppress_amplify:kn:{side}", metric)
                assert stored.n == n and stored.mean == pytest.approx(mean)
                shown.append(format_interval(stored, percent=True))
                assert shown[-1] in line
    assert "no suppress/amplify rows yet" not in result.stdout and "no editing rows yet" in result.stdout
    html = render_report(ReportData.from_atlas(atlas_path))
    section = html[html.index("<h2>Consistency across paraphrases</h2>"):]
    assert all(escape(text) in section for text in shown) and "no interval stored" not in section
    assert "No editing rows yet: run <code>kneuron study editing --run" in section


# ------------------------------------------------------------------------------------------- the section


def hand_rows() -> list[dict]:
    return consistency_rows([FactConsistency("a:1", "a", 0.1, 0.2, 4), FactConsistency("a:2", "a", 0.8, 0.7, 4),
                             FactConsistency("b:1", "b", 0.7, 0.5, 5), FactConsistency("b:3", "b", 0.15, 0.1, 3)])


def test_section_shows_the_summaries_and_the_comparison():
    rows = hand_rows()
    editing = [{"variant": "kn", "relation": "a", "fact_id": f, "metric": metric, "value": v}
               for f, metric, v in (("a:1", "success", 0.0), ("a:2", "success", 1.0), ("b:1", "success", 1.0),
                                    ("a:1", "new_beats_old", 0.25), ("a:2", "new_beats_old", 0.75))]
    aggregates = aggregate_rows([*rows, *split_rows(rows, {"editing": editing})])
    html = consistency_section(rows, {"editing": editing}, {"facts": 4, "digest": "x"}, {"facts": 4, "digest": "x"},
                               "runs/x.sqlite", aggregates)
    assert "Chen et al. (ICLR 2025)" in html and "Only 4 fact(s)." in html and "Not current" not in html
    assert "Otsu threshold on the Jaccard: <b>0.425</b> over 4 facts; 2 of them (50.0%) are inconsistent." in html
    jaccard = find(aggregates, "fact", "jaccard", "a")
    assert jaccard.mean == pytest.approx(0.45) and jaccard.n == 2
    assert (f"<td class=\"l\">a</td><td class=\"\">2</td><td class=\"\">{escape(format_interval(jaccard))}</td>"
            in html)
    # edit success: 1.0 on the 2 consistent facts, 0.0 on the 1 inconsistent one (Wilson's intervals)
    high, low = (find(aggregates, f"editing:kn:{side}", "success") for side in ("consistent", "inconsistent"))
    assert (high.mean, high.n, low.mean, low.n) == (1.0, 2, 0.0, 1)
    assert (f"{escape(format_interval(high, percent=True, signed=False))}</td><td class=\"\">"
            f"{escape(format_interval(low, percent=True, signed=False))}</td><td class=\"\">-100.0%") in html
    assert "no interval stored" in consistency_section(rows, {"editing": editing})  # none stored: bare, with n
    assert "No suppress/amplify rows yet: run <code>kneuron study suppress-amplify --run runs/x.sqlite</code>" in html
    assert "No editing rows yet" not in html
    assert html.count("data:image/png;base64,") == 2
    assert "to a Spearman correlation of 0.80 across the facts" in html  # ranks 1 4 3 2 against 2 4 3 1
    stale = consistency_section(rows, {}, {"facts": 3, "digest": "x"}, {"facts": 4, "digest": "y"})
    assert "Not current:</b> the study covered 3 facts, the atlas has 4 done facts now" in stale
    assert "Not run: <code>kneuron study consistency --run runs/x.sqlite</code>" in consistency_section(
        [], source="runs/x.sqlite")


def test_figures_are_pngs():
    rows = hand_rows()
    for png in (consistency_figure(rows), relations_figure(rows)):
        assert Image.open(io.BytesIO(png)).format == "PNG"
    assert consistency_figure([]) is None and relations_figure([]) is None


def test_report_without_the_study_says_how_to_run_it(atlas_path):
    html = render_report(ReportData.from_atlas(atlas_path))
    assert f"Not run: <code>kneuron study consistency --run {atlas_path}</code>" in html
