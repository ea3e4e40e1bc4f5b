"""The ``edit_methods`` study (KN against ROME) on a tiny float64 model: ROME's rows are the numbers of its edit
applied by hand and scored, the other-C variant's change is the two updates' by hand, the tracing rows are the
engine's, the KN rows are the edit-robustness study's own, the Spearman check is scipy's on the per-fact pairs,
the model is unchanged afterwards; and the study runs from the CLI into the atlas and the report."""

from __future__ import annotations

import io
import json
import math
import zlib
from dataclasses import replace
from html import escape

import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

from kneuron import cli
from kneuron.attribution import Neuron
from kneuron.facts import encode
from kneuron.interventions.rome import RomeSettings, rome_update
from kneuron.interventions.rome_stats import key_second_moment
from kneuron.interventions.tracing import Restoration, embedding_std, indirect_effects, prepare, window_layers
from kneuron.store import Atlas, run
from kneuron.studies.edit_methods import edit_methods_study
from kneuron.studies.edit_methods_summary import comparison, localisation_correlations
from kneuron.studies.edit_robustness import edit_robustness_study
from kneuron.studies.editing import score
from kneuron.studies.intervals import find, format_interval
from kneuron.studies.tracing import traced_prompt
from store.helpers import tiny_facts
from tiny_models import tiny_lm

runner = CliRunner()
LAYER = 1


def _by(rows, fact_id, variant):
    return {r["metric"]: r["value"] for r in rows if r["fact_id"] == fact_id and r["variant"] == variant}


def test_rows_are_the_edits_applied_by_hand():
    lm = tiny_lm("llama", dtype=torch.float64, layers=3)
    facts = tiny_facts()
    chosen = [facts[0], facts[5]]  # capital:France, language:Italy
    neurons = {f.id: [Neuron(2, 3 + i, 1.0), Neuron(1, 7, 0.5)] for i, f in enumerate(facts)}
    main, small = key_second_moment(lm, LAYER, 120), key_second_moment(lm, LAYER, 40)
    settings = RomeSettings(prefixes=2, prefix_tokens=3, steps=3)
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    rows = edit_methods_study(lm, chosen, neurons, layer=LAYER, stats=main, compare_stats=[small], pool=facts,
                              settings=settings, n_neighbours=3, n_other=2, trace_samples=2, seed=1)
    assert all(torch.equal(v, state[k]) for k, v in lm.model.state_dict().items())
    kn_rows = edit_robustness_study(lm, chosen, neurons, pool=facts, n_neighbours=3, seed=1)
    for fact in chosen:
        for variant in ("kn", "kn_signed"):
            mine, theirs = _by(rows, fact.id, variant), _by(kn_rows, fact.id, variant)
            assert {k: mine[k] for k in theirs} == pytest.approx(theirs, nan_ok=True)
        rome = _by(rows, fact.id, "rome")
        assert rome["edited"] == 1.0
        edit = rome_update(lm, fact, _new_answer(rows, fact, lm), layer=LAYER, stats=main, settings=settings)
        queries = [encode(lm, p, edit.meta["new"]) for p in fact.prompts()]
        with edit.applied(lm):
            after = score(lm, queries)
        assert rome["own_p_new_after"] == pytest.approx(float(after.probability.mean()), rel=1e-9)
        assert rome["own_top1_new"] == pytest.approx(float(after.hit.mean()))
        # C from 40 tokens: the same δ, the direction from the other C
        other = rome_update(lm, fact, edit.meta["new"], layer=LAYER, stats=small, settings=settings)
        change = lambda e: torch.stack([v for _, v in sorted(e.values().items())])  # noqa: E731
        expected = float((change(other) - change(edit)).norm() / change(edit).norm())
        assert _by(rows, fact.id, "rome_c40")["change_vs_main"] == pytest.approx(expected, rel=1e-8)
        # the tracing rows are the engine's
        _, _, query, subject = traced_prompt(lm, fact)

        plan = prepare(lm, query, subject, noise=3.0 * embedding_std(lm, [f.subject for f in chosen]), samples=2,
                       seed=zlib.crc32(f"1:{fact.id}".encode()))
        effects = indirect_effects(lm, plan, [Restoration("mlp", subject[-1], window_layers(LAYER, 3, 10)),
                                              Restoration("mlp", subject[-1], (LAYER,))])
        traced = _by(rows, fact.id, "tracing")
        assert traced["at_edit_layer"] == pytest.approx(effects[0], rel=1e-9, abs=1e-15)
        assert traced["at_edit_layer_alone"] == pytest.approx(effects[1], rel=1e-9, abs=1e-15)
    table = dict(comparison(rows))
    assert set(table["facts edited"]) == {"kn", "kn_signed", "rome", "rome_c40"}
    assert table["facts edited"]["rome"] == "2 of 2"


def _new_answer(rows, fact, lm):
    """t' of the study's edit of ``fact``: the answer whose own-prompt probability the rows report (the edit's meta
    is not stored, so it is recomputed the study's way)."""
    from kneuron.facts.robustness import robustness_data
    from kneuron.studies.edit_robustness import robustness_new_answer

    return robustness_new_answer(lm, fact, tiny_facts(), robustness_data(), 1)


def test_hase_check_is_scipys_spearman():
    rows = []
    effects, rises = [0.1, 0.4, 0.2, 0.9], [0.05, 0.3, 0.1, 0.2]
    for i, (effect, rise) in enumerate(zip(effects, rises, strict=True)):
        fact = f"f{i}"
        rows += [{"variant": "tracing", "fact_id": fact, "metric": "at_edit_layer", "value": effect},
                 {"variant": "rome", "fact_id": fact, "metric": "own_p_new_after", "value": 0.2 + rise},
                 {"variant": "rome", "fact_id": fact, "metric": "own_p_new_before", "value": 0.2}]
    (found,) = [c for c in localisation_correlations(rows, effects=("at_edit_layer",))
                if c[1] == "rise of P(new) on own prompts"]
    expected = stats.spearmanr(effects, rises)
    assert found[2:] == pytest.approx((expected.statistic, expected.pvalue, 4))
    assert all(math.isnan(c[2]) for c in localisation_correlations(rows, effects=("at_edit_layer",))
               if c[1] != "rise of P(new) on own prompts")  # no rows: NaN, not an error


def test_the_study_runs_from_the_cli(tmp_path, fake_load):
    path = tmp_path / "tiny.sqlite"
    run(tiny_lm("llama"), tiny_facts(), path, steps=2, known_only=False, progress=False, share=0.3)
    result = runner.invoke(cli.app, ["study", "edit_methods", "--run", str(path),
                                     "--layer", "0", "--stats-samples", "60", "--compare-samples", "30",
                                     "--trace-samples", "2", "--facts", "2", "--neighbours", "2", "--others", "1"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "KN against ROME (layer 0, C from 60 sampled tokens)" in result.stdout
    assert "Hase check" in result.stdout and "rome_c30" in result.stdout
    with Atlas.open(path, read_only=True) as atlas:
        stored = atlas.results("edit_methods")
        aggregates = atlas.aggregates("edit_methods")
    assert {r["variant"] for r in stored} >= {"kn", "kn_signed", "rome", "rome_c30", "tracing", "params"}
    report = tmp_path / "r.html"
    assert runner.invoke(cli.app, ["report", "--run", str(path), "--out", str(report)]).exit_code == 0
    page = report.read_text(encoding="utf-8")
    assert '<h2 id="study-edit_methods">Editing: knowledge neurons against ROME</h2>' in page
    # every method's cells are the stored aggregates (interval, n, paired p against the control in the heading)
    for method, control in (("kn", "kn_signed"), ("rome", "kn_signed"), ("rome_c30", "rome"), ("kn_signed", "")):
        for metric, percent in (("own_top1_new", True), ("own_p_new_after", False)):
            interval = find(aggregates, method, metric)
            assert interval.n >= 1 and interval.control == control
            assert math.isfinite(interval.p) == bool(control)
            shown = format_interval(replace(interval, control=""), percent=percent, signed=False)
            assert shown in result.stdout and escape(shown) in page
        heading = f"{method} (p vs {control})" if control else method
        assert heading in result.stdout and f"{escape(heading)}</th>" in page
    # kneuron report --json carries the same comparison table (the docs' findings page renders it)
    out = tmp_path / "findings.json"
    assert runner.invoke(cli.app, ["report", "--run", str(path), "--json", str(out)]).exit_code == 0
    titles = [t["title"] for t in json.loads(out.read_text(encoding="utf-8"))["tables"]]
    assert not any(title.startswith("Headline") for title in titles)  # no paper study ran: no table of nulls
    (table,) = [t for t in json.loads(out.read_text(encoding="utf-8"))["tables"]
                if t["title"].startswith("KN against ROME (layer 0, C from 60 sampled tokens)")]
    assert table["columns"][1:] == [f"{m} (p vs {c})" if c else m for m, c in
                                    (("kn", "kn_signed"), ("kn_signed", ""), ("rome", "kn_signed"),
                                     ("rome_c30", "rome"))]
    assert table["rows"] == [[label, *cells.values()] for label, cells in comparison(stored, aggregates)]
    rome = format_interval(replace(find(aggregates, "rome", "own_top1_new"), control=""), percent=True, signed=False)
    assert any(rome in cell for row in table["rows"] for cell in row)
    # at 80 columns the table turns into one figure per line, no cell cut
    from rich.console import Console

    from kneuron.studies.catalog.edit_methods import methods_tables

    console = Console(width=80, record=True, file=io.StringIO())
    for part in methods_tables(stored, path, aggregates, width=80):
        console.print(part)
    narrow = console.export_text()
    assert max(len(line) for line in narrow.splitlines()) <= 80
    assert format_interval(replace(find(aggregates, "rome", "own_top1_new"), control=""), percent=True,
                           signed=False) in narrow
