"""The vocabulary projection of value slots (Geva et al. 2022) against a slow float64 loop over tokens that reads the
raw weights, on every tiny family; the sign rule; the answer's ranks; the cache; the refusal for ALBERT."""

from __future__ import annotations

import math

import pytest
import torch

from kneuron.attribution.log_prob_increase import readout_of
from kneuron.errors import InputError
from kneuron.interventions.vocabulary import (
    VocabularyError,
    activation_signs,
    neuron_vocabulary,
    normalised_unembedding,
    slot_logits,
)
from kneuron.models.architectures import final_norm_of, head_projection_of
from tiny_models import CAUSAL_FAMILIES, FAMILIES, NORMED_FAMILIES, tiny_lm

NEURONS = [(0, 3), (2, 5), (1, 7), (2, 0)]
PROJECTED = tuple(f for f in FAMILIES if f != "albert")


def with_random_norms(lm, seed: int = 0):
    """``lm`` with every 1-D weight (the norms': final, per block, after the FFN) and every bias drawn at random,
    so that a projection that forgets a norm weight, or keeps a bias, fails (they start at 1 (or 0) and 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in lm.model.named_parameters():
            if parameter.dim() == 1:
                parameter.copy_(torch.rand(parameter.shape, generator=generator, dtype=parameter.dtype) * 1.5 - 0.25
                                if name.endswith("weight") else torch.randn(parameter.shape, generator=generator))
    return lm


def _raw_slot(lm, layer: int, index: int) -> torch.Tensor:
    weight = lm.ffn_out(layer).weight.detach().double()
    return weight[:, index] if lm.spec.layout == "linear" else weight[index, :]


def reference_logits(lm, layer: int, index: int, sign: float = 1.0) -> list[float]:
    """logit_t = sign · c · m · Σ_j E[t, j] · γ_j · (P (g ⊙ w))_j, one token at a time, from the raw modules."""
    config = lm.model.config
    unembed = lm.model.get_output_embeddings().weight.detach().double()
    projection = head_projection_of(lm.spec, lm.model)
    if projection is not None:
        unembed = unembed @ projection.weight.detach().double()
    slot = _raw_slot(lm, layer, index) * getattr(config, "residual_multiplier", 1.0)
    post = lm.ffn_output_norm(layer)
    if post is not None:  # Gemma 2/3 (1 + weight), OLMo 2 (weight)
        slot = slot * (lm.spec.norm_weight_offset + post.weight.detach().double())
    norm = final_norm_of(lm.spec, lm.model) if lm.spec.final_norm else None
    if norm is not None:
        if lm.spec.final_norm_kind == "layernorm":
            slot = slot - slot.mean()
        if getattr(norm, "weight", None) is not None:
            slot = slot * (lm.spec.norm_weight_offset + norm.weight.detach().double())
    factor = sign * getattr(config, "logit_scale", 1.0) / getattr(config, "logits_scaling", 1.0)
    values = slot.tolist()
    return [factor * math.fsum(e * v for e, v in zip(row, values, strict=True)) for row in unembed.tolist()]


@pytest.mark.parametrize("family", PROJECTED)
def test_projection_matches_the_slow_loop_over_tokens(family):
    lm = with_random_norms(tiny_lm(family, dtype=torch.float64, layers=3))
    signs = [1.0, -1.0, 1.0, -1.0]
    fast = slot_logits(lm, NEURONS, signs)
    assert fast.shape == (len(NEURONS), lm.model.get_output_embeddings().weight.shape[0])
    for row, ((layer, index), sign) in enumerate(zip(NEURONS, signs, strict=True)):
        slow = torch.tensor(reference_logits(lm, layer, index, sign), dtype=torch.float64)
        assert float((fast[row] - slow).abs().max()) < 1e-12 * (1 + float(slow.abs().max()))
        assert float(slow.abs().max()) > 1e-3  # the logits say something


@pytest.mark.parametrize("family", [f for f in CAUSAL_FAMILIES if f not in NORMED_FAMILIES])
def test_projection_is_the_linear_part_of_the_lpi_readout(family):
    """The lpi readout reproduces the model's own logits (it checks so on every prompt); its linear part applied to
    m · w is the projection (r = 1, biases dropped)."""
    lm = with_random_norms(tiny_lm(family, dtype=torch.float64, layers=3))
    readout = readout_of(lm)
    multiplier = getattr(lm.model.config, "residual_multiplier", 1.0)
    slots = torch.stack([_raw_slot(lm, layer, index) * multiplier for layer, index in NEURONS])
    linear = readout.logits(slots, torch.ones(len(NEURONS), dtype=torch.float64)) - readout.constant
    assert torch.allclose(slot_logits(lm, NEURONS), linear, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])  # rmsnorm, layernorm (conv1d slots), masked
def test_top_tokens_and_answer_ranks(family):
    lm = with_random_norms(tiny_lm(family, dtype=torch.float64, layers=3))
    answer = int(lm.tokenizer.convert_tokens_to_ids("Paris"))
    found = neuron_vocabulary(lm, NEURONS, top=7, answer_id=answer)
    assert [v.key for v in found] == NEURONS
    for vocabulary in found:
        slow = reference_logits(lm, vocabulary.layer, vocabulary.index)
        order = sorted(range(len(slow)), key=lambda t: -slow[t])
        assert [t for t, _ in vocabulary.promoted] == order[:7]
        assert [t for t, _ in vocabulary.suppressed] == order[::-1][:7]
        assert [logit for _, logit in vocabulary.promoted] == pytest.approx([slow[t] for t in order[:7]], rel=1e-12)
        assert vocabulary.answer_rank == sum(value > slow[answer] for value in slow)
        assert vocabulary.answer_suppressed_rank == sum(value < slow[answer] for value in slow)
        assert vocabulary.answer_logit == pytest.approx(slow[answer], rel=1e-12)
        assert vocabulary.vocab_size == len(slow) and vocabulary.sign == 1.0


def test_a_negative_sign_swaps_promoted_and_suppressed():
    lm = tiny_lm("llama", dtype=torch.float64, layers=3)
    answer = int(lm.tokenizer.convert_tokens_to_ids("Rome"))
    plus = neuron_vocabulary(lm, NEURONS, top=5, answer_id=answer)
    minus = neuron_vocabulary(lm, NEURONS, signs=[-1.0] * len(NEURONS), top=5, answer_id=answer)
    for p, m in zip(plus, minus, strict=True):
        assert m.sign == -1.0
        assert [t for t, _ in m.promoted] == [t for t, _ in p.suppressed]
        assert [t for t, _ in m.suppressed] == [t for t, _ in p.promoted]
        assert [x for _, x in m.promoted] == pytest.approx([-x for _, x in p.suppressed], rel=1e-12)
        assert (m.answer_rank, m.answer_suppressed_rank) == (p.answer_suppressed_rank, p.answer_rank)
    mixed = neuron_vocabulary(lm, NEURONS, signs=[1.0, -1.0, 1.0, -1.0], top=5)
    assert [v.promoted for v in mixed] == [plus[0].promoted, minus[1].promoted, plus[2].promoted, minus[3].promoted]


def test_activation_signs():
    assert activation_signs([0.5, -0.01, 0.0, -3]) == [1.0, -1.0, 1.0, -1.0]


def test_the_normalised_unembedding_is_cached_per_model_and_follows_in_place_changes():
    lm = tiny_lm("gpt2", dtype=torch.float64, layers=2)
    first = normalised_unembedding(lm)
    assert normalised_unembedding(lm) is first  # computed once per model
    assert normalised_unembedding(tiny_lm("gpt2", dtype=torch.float64, layers=2)) is not first
    norm = final_norm_of(lm.spec, lm.model)
    before = slot_logits(lm, NEURONS[:1])
    with torch.no_grad():
        norm.weight.mul_(2.0)
    try:
        assert torch.allclose(slot_logits(lm, NEURONS[:1]), 2.0 * before, rtol=1e-12)
    finally:
        with torch.no_grad():
            norm.weight.div_(2.0)
    assert torch.allclose(slot_logits(lm, NEURONS[:1]), before, rtol=1e-12)


def test_a_value_slot_edit_shows_at_once():
    """Slots are read at every call (only the unembedding is cached): an edited slot projects as edited."""
    lm = tiny_lm("llama", dtype=torch.float64, layers=3)
    layer, index = NEURONS[0]
    target = int(lm.tokenizer.convert_tokens_to_ids("Berlin"))
    embedding = lm.model.get_output_embeddings().weight[target].detach().clone()
    weight = lm.ffn_out(layer).weight
    saved = weight[:, index].detach().clone()
    with torch.no_grad():
        weight[:, index] += 50 * embedding / lm.model.model.norm.weight.detach()
    try:
        assert neuron_vocabulary(lm, [NEURONS[0]], top=1)[0].promoted[0][0] == target
    finally:
        with torch.no_grad():
            weight[:, index] = saved


def test_albert_and_bad_arguments_are_refused():
    with pytest.raises(VocabularyError, match="narrower than the hidden states"):
        slot_logits(tiny_lm("albert"), [(0, 1)])
    lm = tiny_lm("llama", layers=3)
    with pytest.raises(InputError, match="one sign per neuron"):
        slot_logits(lm, NEURONS, [1.0])
    with pytest.raises(InputError, match="outside"):
        neuron_vocabulary(lm, NEURONS, answer_id=10**6)
    with pytest.raises(InputError, match="top must be"):
        neuron_vocabulary(lm, NEURONS, top=0)
    with pytest.raises(InputError, match="out of range"):
        slot_logits(lm, [(9, 0)])
    assert neuron_vocabulary(lm, []) == []


def test_float32_model_is_projected_in_float32():
    lm = tiny_lm("qwen2", layers=3)
    logits = slot_logits(lm, NEURONS)
    assert logits.dtype == torch.float32
    lm64 = tiny_lm("qwen2", dtype=torch.float64, layers=3)
    assert torch.allclose(logits.double(), slot_logits(lm64, NEURONS), rtol=1e-4, atol=1e-5)
