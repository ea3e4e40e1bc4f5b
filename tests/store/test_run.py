"""run() into an atlas on tiny models: what it stores equals what the library computes, the known filter, the
per-relation limit, resuming (in-process), and the read API."""

from __future__ import annotations

import hashlib
import io
import json
import math
import sqlite3

import pytest
import torch
from rich.console import Console

from kneuron.attribution import activation_baseline, find_knowledge_neurons
from kneuron.errors import KneuronError
from kneuron.facts import Fact, answer_probability
from kneuron.store import SCHEMA_VERSION, Atlas, model_identity, run
from kneuron.store import chunks as chunk_module
from store.helpers import RUN_ARGS, dump, tiny_facts, tiny_model


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def done(lm, tmp_path_factory):
    """One finished run of the tiny facts (shared by the read-only tests of this module)."""
    path = tmp_path_factory.mktemp("atlas") / "tiny.sqlite"
    summary = run(lm, tiny_facts(), path, **RUN_ARGS)
    return path, summary


def test_schema_and_meta(done, lm):
    path, summary = done
    assert summary.computed == 10 and summary.already_done == 0 and summary.selected == 10
    with Atlas.open(path, read_only=True) as atlas:
        meta = atlas.meta
        assert meta["schema_version"] == SCHEMA_VERSION
        assert {k: meta[k] for k in ("family", "kind", "n_layers", "n_neurons", "dtype")} == {
            "family": "llama", "kind": "causal", "n_layers": 3, "n_neurons": 24, "dtype": "float32"}
        assert meta["fingerprint"] == model_identity(lm)["fingerprint"]
        assert meta["params"] == {"estimator": "ig", "steps": 6, "threshold": 0.2, "share": "adaptive",
                                  "objective": "prob", "alphas": "right", "known_only": False, "top": 10,
                                  "min_share": 0.5, "chunk_facts": 3, "keep_scores": "full"}
        tables = {row["name"] for row in atlas.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"meta", "facts", "prompts", "neurons", "generic", "results"}
        assert atlas.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
        assert [f.id for f in atlas.facts()] == [f.id for f in tiny_facts()]
        assert atlas.facts() == tiny_facts()


def test_stored_results_equal_the_library(lm, tmp_path):
    """Every stored number is what find_knowledge_neurons, activation_baseline and answer_probability give (with
    chunks of one fact: a fact alone; tests/store/test_chunks.py compares larger chunks)."""
    path = tmp_path / "alone.sqlite"
    run(lm, tiny_facts()[:4], path, **{**RUN_ARGS, "chunk_facts": 1})
    with Atlas.open(path, read_only=True) as atlas:
        for fact in tiny_facts()[:4]:
            expected = find_knowledge_neurons(lm, fact, steps=6)
            kn = atlas.knowledge_neurons(fact.id)
            assert kn.neurons == expected.neurons
            assert [n.score for n in kn.neurons] == [n.score for n in expected.neurons]
            assert kn.coarse == expected.coarse
            assert [[n.score for n in c] for c in kn.coarse] == [[n.score for n in c] for c in expected.coarse]
            assert kn.params == {k: v for k, v in expected.params.items()}
            assert kn.fact == fact
            stored = atlas.prompt_scores(fact.id)
            assert len(stored) == len(fact.templates)
            for got, want in zip(stored, expected.scores, strict=True):
                assert torch.equal(got.scores, want.scores) and got.scores.dtype == want.scores.dtype
                assert torch.equal(got.activations, want.activations)
                assert torch.equal(got.baseline, want.baseline)
                assert torch.equal(got.completeness_gap, want.completeness_gap)
                assert got.probability == want.probability and got.position == want.position
                assert (got.prompt, got.answer, got.steps, got.objective) == (want.prompt, want.answer, 6, "prob")
            baseline = activation_baseline(expected.scores, len(expected.neurons))
            assert atlas.baseline_neurons(fact.id) == baseline
            assert [n.score for n in atlas.baseline_neurons(fact.id)] == [n.score for n in baseline]
            for row, prompt in zip(atlas.prompt_rows(fact.id), fact.prompts(), strict=True):
                truth = answer_probability(lm, prompt, fact.object)
                assert (row["probability"], row["rank"]) == (truth.probability, truth.rank)


def test_relation_neurons_and_all_refined(done):
    path, _ = done
    with Atlas.open(path, read_only=True) as atlas:
        refined = atlas.all_refined()
        assert list(refined) == [f.id for f in tiny_facts()]
        for relation in ("capital", "language", "continent"):
            expected = {}
            for fact in atlas.facts(relation=relation):
                for key in {n.key for n in refined[fact.id]}:
                    expected[key] = expected.get(key, 0) + 1
            assert dict(atlas.relation_neurons(relation)) == expected
        assert atlas.relation_neurons("no such relation") == {}
        layers = atlas.layer_counts()
        assert sum(layers.values()) == sum(len(v) for v in refined.values()) and set(layers) == {0, 1, 2}
        top = atlas.top_neurons(3)
        counts = {}
        for neurons in refined.values():
            for key in {n.key for n in neurons}:
                counts[key] = counts.get(key, 0) + 1
        assert [facts for _, facts in top] == sorted(counts.values(), reverse=True)[:3]


def test_generic_table(done):
    path, _ = done
    with Atlas.open(path, read_only=True) as atlas:
        refined = atlas.all_refined()
        rows = atlas.query("SELECT layer, neuron, facts, share, flagged FROM generic")
        counts = {}
        for neurons in refined.values():
            for key in {n.key for n in neurons}:
                counts[key] = counts.get(key, 0) + 1
        assert {(r["layer"], r["neuron"]): r["facts"] for r in rows} == {k: c for k, c in counts.items() if c >= 2}
        for r in rows:
            assert r["share"] == r["facts"] / 10 and r["flagged"] == int(r["facts"] > 1)  # > 10% of 10 facts
        assert [g.key for g in atlas.generic_neurons()] == [(r["layer"], r["neuron"]) for r in sorted(
            rows, key=lambda r: (-r["facts"], r["layer"], r["neuron"])) if r["flagged"]]


def test_update_generic_with_another_share(done, tmp_path):
    path, _ = done
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(path.read_bytes())
    with Atlas.open(copy) as atlas:
        most = max(g.facts for g in atlas.generic_neurons(flagged_only=False))
        found = atlas.update_generic(share=(most - 0.5) / 10)
        assert found and all(g.facts == most for g in found)
        assert atlas.meta["generic"] == {"share": (most - 0.5) / 10, "min_facts": 2, "facts": 10}


def test_finished_run_started_again_does_nothing(done, lm, monkeypatch):
    path, _ = done
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    calls = []
    original = chunk_module.compute_chunk
    monkeypatch.setattr(chunk_module, "compute_chunk", lambda *a, **k: calls.append(1) or original(*a, **k))
    summary = run(lm, tiny_facts(), path, **RUN_ARGS)
    assert (summary.computed, summary.already_done, calls) == (0, 10, [])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_interrupted_run_resumes_to_the_same_atlas(done, lm, tmp_path, monkeypatch):
    """An exception (here KeyboardInterrupt) in the middle of a fact: the facts before it stay, the run
    continues from there and ends with the same rows as the uninterrupted run."""
    path = tmp_path / "resumed.sqlite"
    original = Atlas.store_fact
    stored = []

    def store_then_stop(self, fact_id, *args, **kwargs):
        if len(stored) == 4:
            raise KeyboardInterrupt
        stored.append(fact_id)
        return original(self, fact_id, *args, **kwargs)

    monkeypatch.setattr(Atlas, "store_fact", store_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(lm, tiny_facts(), path, **RUN_ARGS)
    monkeypatch.setattr(Atlas, "store_fact", original)
    with Atlas.open(path, read_only=True) as atlas:
        assert [f.id for f in atlas.facts()] == stored
        assert len(atlas.facts("pending")) == 6
        assert atlas.query("SELECT count(*) AS n FROM prompts")[0]["n"] == 12
    summary = run(lm, tiny_facts(), path, **RUN_ARGS)
    assert (summary.computed, summary.already_done) == (6, 4)
    assert dump(path) == dump(done[0])


def test_known_filter_drops_and_counts_per_relation(lm, tmp_path):
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    summary = run(lm, tiny_facts(), tmp_path / "known.sqlite", steps=4, top=100, console=console)
    with Atlas.open(tmp_path / "known.sqlite", read_only=True) as atlas:
        rows = atlas.fact_rows(status=None)
        for row in rows:
            ranks = json.loads(row["ranks"])
            share = sum(r < 100 for r in ranks) / len(ranks)
            assert row["known_share"] == share and row["known"] == int(share > 0.5)
            assert row["status"] == ("done" if share > 0.5 else "dropped")
        dropped = {}
        for row in rows:
            if row["status"] == "dropped":
                dropped[row["relation"]] = dropped.get(row["relation"], 0) + 1
        assert dropped and summary.dropped == dropped
        assert summary.computed == len(atlas.facts()) == 10 - sum(dropped.values())
        assert atlas.query("SELECT count(*) AS n FROM prompts WHERE fact_id IN "
                           "(SELECT id FROM facts WHERE status = 'dropped')")[0]["n"] == 0
    text = out.getvalue()
    assert f"dropped {sum(dropped.values())} facts the model does not know" in text
    assert all(f"{relation} {count}" in text for relation, count in dropped.items())
    assert "facts" in text and "s of attribution" in text


def test_limit_per_relation_takes_the_first_known_facts(lm, tmp_path):
    path = tmp_path / "limit.sqlite"
    first = run(lm, tiny_facts(), path, steps=4, top=100, progress=False, limit_per_relation=1)
    with Atlas.open(path, read_only=True) as atlas:
        rows = atlas.fact_rows(status=None)
        done = [row["id"] for row in rows if row["status"] == "done"]
    known = [f for f in tiny_facts() if _known(lm, f, 100)]
    expected = []
    for relation in ("capital", "language", "continent"):
        expected += [f.id for f in known if f.relation == relation][:1]
    assert sorted(done) == sorted(expected) and first.computed == len(expected)
    again = run(lm, tiny_facts(), path, steps=4, top=100, progress=False, limit_per_relation=1)
    assert again.computed == 0
    more = run(lm, tiny_facts(), path, steps=4, top=100, progress=False, limit_per_relation=2)
    with Atlas.open(path, read_only=True) as atlas:
        done = [f.id for f in atlas.facts()]
    expected = []
    for relation in ("capital", "language", "continent"):
        expected += [f.id for f in known if f.relation == relation][:2]
    assert sorted(done) == sorted(expected) and more.computed == len(expected) - first.computed


def _known(lm, fact: Fact, top: int) -> bool:
    ranks = [answer_probability(lm, p, fact.object).rank for p in fact.prompts()]
    return sum(r < top for r in ranks) / len(ranks) > 0.5


def test_invalid_facts_are_recorded_and_skipped(tmp_path):
    """A masked model cannot predict a word outside its vocabulary: that fact is 'invalid', the others run."""
    bert = tiny_model("bert")
    facts = [*tiny_facts()[:2], Fact("Norway", "capital", "Xylophone", tiny_facts()[0].templates)]
    summary = run(bert, facts, tmp_path / "bert.sqlite", **RUN_ARGS)
    assert summary.computed == 2 and list(summary.invalid) == ["capital:Norway"]
    with Atlas.open(tmp_path / "bert.sqlite", read_only=True) as atlas:
        row = atlas.fact_rows("invalid")[0]
        assert "Xylophone" in row["note"] and row["known"] is None
        with pytest.raises(KneuronError, match="invalid"):
            atlas.knowledge_neurons("capital:Norway")


def test_float64_model_keeps_float64_scores(tmp_path):
    lm64 = tiny_model("gpt2", dtype=torch.float64)
    fact = tiny_facts()[0]
    run(lm64, [fact], tmp_path / "f64.sqlite", **RUN_ARGS)
    with Atlas.open(tmp_path / "f64.sqlite", read_only=True) as atlas:
        got = atlas.prompt_scores(fact.id)
        assert atlas.query("SELECT DISTINCT dtype FROM prompts") == [{"dtype": "float64"}]
    want = find_knowledge_neurons(lm64, fact, steps=6).scores
    assert all(torch.equal(g.scores, w.scores) and g.scores.dtype == torch.float64 for g, w in zip(got, want,
                                                                                                     strict=True))


def test_results_replace_a_study_atomically(done, tmp_path):
    copy = tmp_path / "results.sqlite"
    copy.write_bytes(done[0].read_bytes())
    rows = [{"study": "s", "variant": "kn", "relation": "capital", "fact_id": "capital:France", "metric": "suppress",
             "value": -0.25},
            {"variant": "kn", "relation": "", "fact_id": "", "metric": "mean", "value": math.nan}]
    with Atlas.open(copy) as atlas:
        assert atlas.write_results("s", rows) == 2
        assert atlas.write_results("other", [{"variant": "v", "metric": "m", "value": 1}]) == 1
        got = atlas.results("s")
        assert got[0] == rows[0] and math.isnan(got[1]["value"]) and got[1]["relation"] == ""
        with pytest.raises(KneuronError, match="row 1"):  # a bad row: nothing of the new rows is written
            atlas.write_results("s", [{"variant": "kn", "metric": "x", "value": 1.0}, {"variant": "kn"}])
        assert len(atlas.results("s")) == 2
        with pytest.raises(KneuronError, match="belongs to study"):
            atlas.write_results("s", [{"study": "t", "variant": "kn", "metric": "x", "value": 1.0}])
        atlas.write_results("s", rows[:1])
        assert atlas.results("s") == rows[:1]
        assert [r["study"] for r in atlas.results()] == ["other", "s"] and atlas.studies() == ["other", "s"]
    with Atlas.open(copy, read_only=True) as atlas, pytest.raises(KneuronError, match="read-only"):
        atlas.write_results("s", rows)


def test_readers_see_a_consistent_atlas_while_a_run_writes(lm, tmp_path, monkeypatch):
    """A reader opened during a run sees whole facts only (each fact is one transaction)."""
    path = tmp_path / "live.sqlite"
    seen = []
    original = Atlas.store_fact

    def store_and_look(self, fact_id, *args, **kwargs):
        result = original(self, fact_id, *args, **kwargs)
        with Atlas.open(path, read_only=True) as reader:
            facts = reader.facts()
            prompts = reader.query("SELECT count(*) AS n FROM prompts")[0]["n"]
            seen.append((len(facts), prompts))
        return result

    monkeypatch.setattr(Atlas, "store_fact", store_and_look)
    run(lm, tiny_facts()[:3], path, **RUN_ARGS)
    assert seen == [(1, 3), (2, 6), (3, 9)]


def test_query_and_errors_of_the_read_api(done):
    path, _ = done
    with Atlas.open(path, read_only=True) as atlas:
        assert atlas.query("SELECT id FROM facts WHERE relation = ? ORDER BY seq", ["continent"]) == [
            {"id": "continent:Egypt"}, {"id": "continent:China"}]
        with pytest.raises(KneuronError, match="No fact 'capital:Mars'"):
            atlas.knowledge_neurons("capital:Mars")
        with pytest.raises(KneuronError, match="Unknown fact status"):
            atlas.facts("finished")
        with pytest.raises(KneuronError, match="SQLite error"):
            atlas.query("SELECT nothing FROM nowhere")
        assert atlas.status_counts()["capital"] == {"pending": 0, "done": 5, "dropped": 0, "invalid": 0}


def test_bad_run_arguments(lm, tmp_path):
    with pytest.raises(KneuronError, match="steps"):
        run(lm, tiny_facts(), tmp_path / "x.sqlite", steps=0, progress=False)
    with pytest.raises(KneuronError, match="share"):
        run(lm, tiny_facts(), tmp_path / "x.sqlite", share=1.5, progress=False)
    with pytest.raises(KneuronError, match="limit_per_relation"):
        run(lm, tiny_facts(), tmp_path / "x.sqlite", limit_per_relation=0, progress=False)
    twin = Fact("France", "capital", "Lyon", tiny_facts()[0].templates)
    with pytest.raises(KneuronError, match="share the id"):
        run(lm, [*tiny_facts(), twin], tmp_path / "x.sqlite", progress=False)
    assert not (tmp_path / "x.sqlite").exists()


def test_write_happens_in_one_transaction_per_fact(lm, tmp_path, monkeypatch):
    """Count COMMITs: one for registering the facts, one per fact, one for the generic table (the schema is
    written in one transaction of its own, under a temporary name: see kneuron.store.files.create)."""
    commits = []
    original = Atlas.transaction

    def counting(self):
        commits.append(1)
        return original(self)

    monkeypatch.setattr(Atlas, "transaction", counting)
    run(lm, tiny_facts()[:3], tmp_path / "tx.sqlite", **RUN_ARGS)
    assert len(commits) == 1 + 3 + 1
    assert sqlite3.connect(tmp_path / "tx.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_no_progress_prints_nothing(lm, tmp_path, capsys):
    run(lm, tiny_facts()[:2], tmp_path / "quiet.sqlite", **RUN_ARGS)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
