"""Rows of prompts whose cached prefixes differ in length, in one padded batch (:mod:`kneuron.models.padded_context`),
against the same rows run one prompt a batch: the same gradients and objectives in float64, on every causal
family that allows it; the families that do not keep one batch per prefix length."""

from __future__ import annotations

import pytest
import torch

from kneuron.attribution.step_rows import batch_key, make_plan, run_rows, shape_key
from kneuron.facts import encode
from kneuron.models.padded_context import pads_contexts
from kneuron.models.partial_forward import frozen_parameters
from tiny_models import CAUSAL_FAMILIES, tiny_lm

PROMPTS = ["The capital of France is", "Paris is the capital of", "In short, the capital city of France is"]


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_padded_rows_are_the_rows_of_each_prompt_alone(family):
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    plans = [make_plan(lm, encode(lm, prompt, "Paris"), "prob") for prompt in PROMPTS]
    assert len({plan.context for plan in plans}) > 1  # prefixes of several lengths
    if not pads_contexts(lm):
        assert len({batch_key(lm, plan) for plan in plans}) == len({shape_key(plan) for plan in plans})
        return
    assert len({batch_key(lm, plan) for plan in plans}) == 1
    chunk = [(p, layer, alpha, True) for layer in (0, 1, 2) for p in range(len(plans)) for alpha in (0.3, 1.0)]
    with frozen_parameters(lm.model):
        grads, values = run_rows(lm, plans, chunk, "prob")
        for index, row in enumerate(chunk):
            alone, value = run_rows(lm, plans, [row], "prob")
            assert values[index] == pytest.approx(value[0], rel=1e-12)
            assert torch.allclose(grads[index], alone[0], rtol=1e-10, atol=1e-14 * float(alone[0].abs().max()))
        _, baselines = run_rows(lm, plans, [(p, 1, 0.0, False) for p in range(len(plans))], "prob", gradients=False)
        for p, baseline in enumerate(baselines):
            assert baseline == pytest.approx(run_rows(lm, plans, [(p, 1, 0.0, False)], "prob", gradients=False)[1][0],
                                             rel=1e-12)


def test_a_model_with_a_sliding_window_keeps_one_batch_per_prefix_length():
    lm = tiny_lm("mistral", dtype=torch.float64, layers=2, sliding_window=4)
    assert not pads_contexts(lm)


def test_the_llama_family_pads():
    assert all(pads_contexts(tiny_lm(family, layers=2)) for family in ("llama", "mistral", "qwen2", "phi3"))
    assert not any(pads_contexts(tiny_lm(family, layers=2)) for family in ("gpt2", "bloom", "gemma2"))
