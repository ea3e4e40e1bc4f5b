"""Integrated gradients and gradient × activation on models with shared layers (one block at several depths):
ALBERT, ALBERT with several groups of several layers, and a causal model whose block list repeats one block.
Compared with the naive float64 reference (tests/attribution/reference.py), which counts depths by itself."""

from __future__ import annotations

import pytest
import torch
from transformers import AlbertForMaskedLM, AutoModelForCausalLM

from attribution.reference import naive_integrated_gradients
from kneuron.attribution import GradientTimesActivation, integrated_gradients, integrated_gradients_many
from kneuron.attribution.estimators import estimator_named
from kneuron.errors import KneuronError
from kneuron.facts import encode
from kneuron.models import from_model
from tiny_models import tiny_config, tiny_lm, tiny_tokenizer


def _rel_error(fast: torch.Tensor, slow: torch.Tensor) -> float:
    return float((fast - slow).abs().max() / slow.abs().max())


def grouped_albert():
    """4 passes over 2 groups of 2 layers: 8 depths, each of the 4 layers at 2 of them."""
    config = tiny_config("albert", layers=4)
    config.num_hidden_groups, config.inner_group_num = 2, 2
    torch.manual_seed(0)
    return from_model(AlbertForMaskedLM(config).double().eval(), tiny_tokenizer("mlm"), name="tiny-albert-groups")


def repeated_gpt2():
    """A GPT-2 whose block list holds one block three times (no key/value cache: one attention for 3 depths)."""
    config = tiny_config("gpt2", layers=3)
    config.use_cache = False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").double().eval()
    model.transformer.h = torch.nn.ModuleList([model.transformer.h[0]] * 3)
    return from_model(model, tiny_tokenizer("causal"), name="tiny-gpt2-repeated")


def test_albert_matches_the_reference_depth_by_depth():
    lm = tiny_lm("albert", dtype=torch.float64)
    query = encode(lm, "The capital of France is [Y].", "Copenhagen")
    fast = integrated_gradients(lm, query, steps=4, batch_rows=5)
    slow, clean, zero = naive_integrated_gradients(lm, query, steps=4)
    assert _rel_error(fast.scores, slow) < 1e-6
    assert fast.probability == pytest.approx(float(clean), rel=1e-9)
    assert torch.allclose(fast.baseline, zero, rtol=1e-9, atol=0)
    # depths do differ: a mix-up (one depth's scores for another's) would show
    assert _rel_error(fast.scores[0], fast.scores[2]) > 0.1 and _rel_error(fast.scores[1], fast.scores[2]) > 0.1


def test_groups_of_several_layers():
    lm = grouped_albert()
    assert lm.n_layers == 8 and lm.sharing(1) == (1, 3) and lm.sharing(4) == (4, 6) and lm.occurrence(7) == 1
    query = encode(lm, "The capital of France is [Y].", "Paris")
    fast = integrated_gradients(lm, query, steps=3)
    slow, _, zero = naive_integrated_gradients(lm, query, steps=3)
    assert _rel_error(fast.scores, slow) < 1e-6
    assert torch.allclose(fast.baseline, zero, rtol=1e-9, atol=0)


def test_prompts_of_one_shape_share_batches_exactly():
    lm = tiny_lm("albert", dtype=torch.float64)
    bag = ["The capital of France is [Y].", "[Y] is the capital of France.", "The capital city of France is [Y]."]
    together = integrated_gradients_many(lm, bag, "Paris", steps=3, batch_rows=7)
    for prompt, scores in zip(bag, together, strict=True):
        slow, _, _ = naive_integrated_gradients(lm, encode(lm, prompt, "Paris"), steps=3)
        assert _rel_error(scores.scores, slow) < 1e-6


def test_a_repeated_block_is_found_by_identity():
    lm = repeated_gpt2()
    assert lm.shared_layers and lm.sharing(0) == (0, 1, 2)
    query = encode(lm, "The capital of France is", "Paris")
    gxa = GradientTimesActivation().attribute(lm, [query])[0]
    one_point, _, _ = naive_integrated_gradients(lm, query, steps=1)  # gxa is IG's α = 1 point
    assert _rel_error(gxa.scores, one_point) < 1e-6
    with pytest.raises(KneuronError, match="causal model with shared layers"):
        integrated_gradients(lm, query, steps=2)
    with pytest.raises(KneuronError, match="shared layers"):
        estimator_named("lpi").attribute(lm, [query])


def test_the_prefix_skipping_path_refuses_shared_layers():
    from kneuron.models.partial_forward import start_at_layer

    lm = tiny_lm("albert")
    with pytest.raises(KneuronError, match="several depths"), start_at_layer(lm, 1, torch.zeros(1, 3, 16)):
        pass


def test_rows_join_at_their_own_depth_and_skip_the_depths_below():
    """The FFN of each depth sees only the rows running there: none below the batch's lowest depth, then the rows
    of each depth join (steps 3, depths 1 and 2 in one batch: 3 rows at depth 1, 3 + 3 at depth 2)."""
    lm = tiny_lm("albert", dtype=torch.float64)
    query = encode(lm, "The capital of France is [Y].", "Paris")
    widths: list[int] = []
    handle = lm.ffn_out(0).register_forward_pre_hook(lambda _m, args: widths.append(args[0].shape[0]))
    try:
        fast = integrated_gradients(lm, query, steps=3, layers=[1, 2])
    finally:
        handle.remove()
    assert widths == [1, 1, 1, 3, 6, 1, 2]  # clean pass; the steps; the zero baselines (one row per depth)
    slow, _, _ = naive_integrated_gradients(lm, query, steps=3)
    assert _rel_error(fast.scores[1:], slow[1:]) < 1e-6 and not fast.scores[0].any()
