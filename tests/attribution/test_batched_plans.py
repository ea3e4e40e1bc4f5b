"""The clean passes of several prompts in one right-padded batch (``make_plans``) against one prompt at a time
(``make_plan``): the same activations, block inputs, cache, probability and ranks, in float64, on every causal
family (those that cannot pad take ``make_plan`` itself)."""

from __future__ import annotations

import pytest
import torch

from kneuron.attribution.step_rows import make_plan, make_plans
from kneuron.facts import encode
from kneuron.models.partial_forward import cache_layers
from tiny_models import CAUSAL_FAMILIES, tiny_lm

PROMPTS = ["The capital of France is", "Paris is the capital of", "In short, the capital city of France is"]


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
@pytest.mark.parametrize("answer", ["Paris", "Paris Paris"])
def test_batched_clean_passes_are_each_prompts_own(family, answer):
    lm = tiny_lm(family, dtype=torch.float64, layers=2)
    queries = [encode(lm, prompt, answer) for prompt in PROMPTS]
    batched = make_plans(lm, queries, "prob")
    for query, mine in zip(queries, batched, strict=True):
        alone = make_plan(lm, query, "prob")
        assert torch.equal(mine.input_ids, alone.input_ids) and mine.position == alone.position
        assert torch.equal(mine.targets, alone.targets) and torch.equal(mine.answer_ids, alone.answer_ids)
        assert torch.allclose(mine.activations, alone.activations, rtol=1e-10, atol=1e-12)
        assert mine.block_inputs.keys() == alone.block_inputs.keys()
        for layer, clean in alone.block_inputs.items():
            assert mine.block_inputs[layer].shape == clean.shape
            assert torch.allclose(mine.block_inputs[layer], clean, rtol=1e-10, atol=1e-12)
        assert mine.probability == pytest.approx(alone.probability, rel=1e-10)
        assert mine.log_probability == pytest.approx(alone.log_probability, rel=1e-10, abs=1e-12)
        assert mine.answer_ranks == alone.answer_ranks and mine.vocab_size == alone.vocab_size
        assert mine.fused_head == alone.fused_head and mine.context == alone.context
        for ours, theirs in zip(cache_layers(lm, mine.cache), cache_layers(lm, alone.cache), strict=True):
            assert ours.keys.shape == theirs.keys.shape
            assert torch.allclose(ours.keys, theirs.keys, rtol=1e-10, atol=1e-12)
            assert torch.allclose(ours.values, theirs.values, rtol=1e-10, atol=1e-12)


def test_the_llama_family_makes_its_plans_in_one_pass(monkeypatch):
    import kneuron.attribution.step_rows as step_rows

    lm = tiny_lm("llama", dtype=torch.float64, layers=2)
    queries = [encode(lm, prompt, "Paris") for prompt in PROMPTS]

    def refused(*_args, **_kwargs):
        raise AssertionError("make_plan ran: the prompts were not batched")

    monkeypatch.setattr(step_rows, "make_plan", refused)
    assert len(step_rows.make_plans(lm, queries, "prob")) == 3


def test_answers_of_several_lengths_are_batched_by_length():
    lm = tiny_lm("llama", dtype=torch.float64, layers=2)
    queries = [encode(lm, PROMPTS[0], "Paris"), encode(lm, PROMPTS[1], "Paris Paris"), encode(lm, PROMPTS[2], "Paris")]
    for query, mine in zip(queries, make_plans(lm, queries, "prob"), strict=True):
        assert mine.probability == pytest.approx(make_plan(lm, query, "prob").probability, rel=1e-10)
        assert len(mine.answer_ids) == len(query.answer_ids)
