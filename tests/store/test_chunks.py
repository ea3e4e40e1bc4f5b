"""Facts in chunks: prompts of different facts share IG batches, each prompt's scores stay what it gets alone up to
float rounding, chunks depend on the atlas's fact order only, and one-fact chunks are today's per-fact run."""

from __future__ import annotations

import importlib

import torch

from kneuron.attribution import find_knowledge_neurons
from kneuron.store import Atlas, run
from kneuron.store.chunks import Chunk, compute_chunk, plan_chunks, same_shape_shares
from store.helpers import RUN_ARGS, dump, synthetic_facts, tiny_facts, tiny_model

ig_module = importlib.import_module("kneuron.attribution.integrated_gradients")  # the package shadows it


def test_chunk_prompts_share_batches_across_facts_and_score_as_alone(monkeypatch):
    """One chunk of four facts: some IG batch holds rows of two facts; every prompt's scores equal its fact's
    alone within float64 rounding, and the neurons are the same."""
    lm = tiny_model("llama", dtype=torch.float64)
    facts = tiny_facts()[:4]
    params = {"steps": 6, "objective": "prob", "alphas": "right", "threshold": 0.2, "share": "adaptive"}
    seen: list[set[int]] = []
    real = ig_module.run_rows

    def spy(lm_, plans, chunk, objective, gradients=True, **options):
        seen.append({p for p, *_ in chunk})
        return real(lm_, plans, chunk, objective, gradients=gradients, **options)

    monkeypatch.setattr(ig_module, "run_rows", spy)
    result = compute_chunk(lm, Chunk(0, facts, [f.id for f in facts]), params)
    monkeypatch.undo()
    per_fact = [len(f.templates) for f in facts]
    owner = [i for i, n in enumerate(per_fact) for _ in range(n)]
    assert any(len({owner[p] for p in batch}) > 1 for batch in seen)  # a batch mixes facts
    assert [r.fact_id for r in result.results] == [f.id for f in facts]
    for fact, got in zip(facts, result.results, strict=True):
        alone = find_knowledge_neurons(lm, fact, steps=6)
        assert got.kn.neurons == alone.neurons and got.kn.coarse == alone.coarse
        assert got.kn.params == alone.params
        for mine, theirs in zip(got.kn.scores, alone.scores, strict=True):
            torch.testing.assert_close(mine.scores, theirs.scores, rtol=1e-12, atol=1e-15)
            assert torch.equal(mine.activations, theirs.activations)
            assert (mine.prompt, mine.answer, mine.probability) == (theirs.prompt, theirs.answer, theirs.probability)


def test_chunked_atlas_equals_the_per_fact_atlas_up_to_rounding(tmp_path):
    """Float32: an atlas of chunks of 4 and one of chunks of 1 (today's per-fact run) hold the same facts,
    prompts, probabilities and neurons; scores agree to float32 rounding."""
    lm = tiny_model("llama")
    facts = tiny_facts()
    run(lm, facts, tmp_path / "chunked.sqlite", **{**RUN_ARGS, "chunk_facts": 4})
    run(lm, facts, tmp_path / "alone.sqlite", **{**RUN_ARGS, "chunk_facts": 1})
    with Atlas.open(tmp_path / "chunked.sqlite", read_only=True) as a, \
            Atlas.open(tmp_path / "alone.sqlite", read_only=True) as b:
        assert a.facts() == b.facts() == facts
        assert a.prompt_rows() == b.prompt_rows()
        for fact in facts:
            ka, kb = a.knowledge_neurons(fact.id), b.knowledge_neurons(fact.id)
            assert ka.neurons == kb.neurons and ka.coarse == kb.coarse
            for sa, sb in zip(a.prompt_scores(fact.id), b.prompt_scores(fact.id), strict=True):
                torch.testing.assert_close(sa.scores, sb.scores, rtol=1e-4, atol=1e-7)
                assert torch.equal(sa.activations, sb.activations)


def test_chunks_of_one_fact_are_todays_run_byte_for_byte(tmp_path):
    """chunk_facts=1 computes each fact exactly as find_knowledge_neurons does: the same score bytes."""
    lm = tiny_model("llama")
    fact = tiny_facts()[2]  # a two-token answer
    run(lm, [fact], tmp_path / "one.sqlite", **{**RUN_ARGS, "chunk_facts": 1})
    alone = find_knowledge_neurons(lm, fact, steps=6)
    with Atlas.open(tmp_path / "one.sqlite", read_only=True) as atlas:
        for got, want in zip(atlas.prompt_scores(fact.id), alone.scores, strict=True):
            assert torch.equal(got.scores, want.scores)


def test_chunks_depend_on_fact_order_only():
    rows = [{"id": f"f{i}", "status": s} for i, s in enumerate(
        ["pending", "done", "dropped", "pending", "invalid", "done", "pending", "pending"])]
    every = {r["id"] for r in rows if r["status"] == "pending"}
    assert plan_chunks(rows, every, 2) == [(0, ["f0", "f1"], ["f0"]), (1, ["f3", "f5"], ["f3"]),
                                           (2, ["f6", "f7"], ["f6", "f7"])]
    # f0's chunk done: the others keep their composition
    assert plan_chunks(rows, every - {"f0"}, 2) == [(1, ["f3", "f5"], ["f3"]), (2, ["f6", "f7"], ["f6", "f7"])]


def test_resumed_mid_chunk_equals_uninterrupted(tmp_path):
    """A run stopped after some facts of a chunk (here: only part of the selection first) recomputes the whole
    chunk and stores the rest: the same atlas, row for row and byte for byte, as one run."""
    lm = tiny_model("llama")
    facts = synthetic_facts(9)
    args = {**RUN_ARGS, "chunk_facts": 4}
    whole = tmp_path / "whole.sqlite"
    run(lm, facts, whole, **args)
    parts = tmp_path / "parts.sqlite"
    run(lm, facts, parts, **args)  # registers all, computes all
    with Atlas.open(parts) as atlas, atlas.transaction() as db:  # undo facts 1 and 6: mid-chunk resumes
        db.execute("UPDATE facts SET status = 'pending' WHERE id IN (?, ?)", (facts[1].id, facts[6].id))
        db.execute("DELETE FROM prompts WHERE fact_id IN (?, ?)", (facts[1].id, facts[6].id))
        db.execute("DELETE FROM neurons WHERE fact_id IN (?, ?)", (facts[1].id, facts[6].id))
    summary = run(lm, facts, parts, **args)
    assert (summary.computed, summary.already_done) == (2, 7)
    assert dump(parts) == dump(whole)


def test_same_shape_shares():
    lm = tiny_model("llama")
    facts = synthetic_facts(8)
    shares = same_shape_shares(lm, facts, 4)
    assert shares["prompts"] == 24
    assert 0.0 <= shares["within_fact"] <= shares["within_chunk"] <= 1.0
    assert shares["within_chunk"] > shares["within_fact"]


def test_query_shape_is_the_plans_shape_key():
    from kneuron.attribution.step_rows import make_plan, shape_key
    from kneuron.facts import encode
    from kneuron.store.chunks import query_shape

    for family in ("llama", "bert"):
        lm = tiny_model(family)
        for fact in tiny_facts():
            for prompt in fact.prompts():
                query = encode(lm, prompt, fact.object)
                assert query_shape(lm, query) == shape_key(make_plan(lm, query, "prob"))
