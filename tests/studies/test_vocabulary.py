"""The vocabulary study on tiny models: signs from activations read by a hand-written hook, the projection of the
signed slot, a slot edited to write its answer found at rank 0, the rows, and the seeded random control."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from kneuron.facts import encode
from kneuron.interventions.vocabulary import slot_logits
from kneuron.studies.metrics import fact_rng, summarize
from kneuron.studies.suppress_amplify import random_control
from kneuron.studies.vocabulary import (
    STUDY,
    fact_vocabulary,
    study_vocabularies,
    vocabulary_rows,
    vocabulary_study,
    vocabulary_summary,
)
from studies.conftest import activation_by_hand, tiny_facts, tiny_neurons
from tiny_models import tiny_lm


def mean_activation_by_hand(lm, fact, layer: int, index: int) -> float:
    """The neuron's activation at the answer position, averaged over the fact's prompts (a hand-written hook)."""
    values = []
    for prompt in fact.prompts():
        query = encode(lm, prompt, fact.object)
        values.append(float(activation_by_hand(lm, query.input_ids, layer, index)[query.position]))
    return sum(values) / len(values)


@torch.no_grad()
def mean_layer_activations_by_hand(lm, fact) -> dict[int, torch.Tensor]:
    """Every neuron's activation at the answer position, averaged over the fact's prompts, by layer (a hand-written
    hook on each FFN output projection's input; one forward pass per prompt)."""
    sums: dict[int, torch.Tensor] = {}
    prompts = fact.prompts()
    for prompt in prompts:
        query = encode(lm, prompt, fact.object)
        handles = [lm.ffn_out(layer).register_forward_pre_hook(
            lambda _m, args, layer=layer, at=query.position: sums.__setitem__(
                layer, sums.get(layer, 0) + args[0][0, at].double())) for layer in range(lm.n_layers)]
        try:
            lm.model(input_ids=query.input_ids[None])
        finally:
            for handle in handles:
                handle.remove()
    return {layer: total / len(prompts) for layer, total in sums.items()}


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])  # gated (negative activations), GELU causal, masked
def test_signs_and_projection_follow_the_activations(family):
    lm = tiny_lm(family, dtype=torch.float64, layers=3, neurons=16)
    facts = tiny_facts()
    neurons = tiny_neurons(facts)
    found = study_vocabularies(lm, facts, neurons, seed=3, top=5)
    assert [f.fact.id for f in found] == [f.id for f in facts]
    negative = 0
    for entry in found:
        answer = entry.answer_id
        assert answer == encode(lm, entry.fact.prompts()[0], entry.fact.object).answer_ids[0]
        by_hand = mean_layer_activations_by_hand(lm, entry.fact)
        for vocabulary in entry.knowledge + entry.random:
            mean = float(by_hand[vocabulary.layer][vocabulary.index])
            assert entry.activations[vocabulary.key] == pytest.approx(mean, rel=1e-9, abs=1e-12)
            assert vocabulary.sign == (-1.0 if mean < 0 else 1.0)
            negative += mean < 0
            logits = slot_logits(lm, [vocabulary.key])[0] * vocabulary.sign
            assert [t for t, _ in vocabulary.promoted] == torch.topk(logits, 5).indices.tolist()
            assert vocabulary.answer_rank == int((logits > logits[answer]).sum())
        assert [v.key for v in entry.knowledge] == [n.key for n in neurons[entry.fact.id]]
    if family == "llama":
        assert negative > 0  # a gated FFN: the sign rule is exercised


def test_a_neuron_whose_slot_writes_the_answer_ranks_it_first_with_either_sign():
    lm = tiny_lm("llama", dtype=torch.float64, layers=3, neurons=16)
    fact = tiny_facts()[0]  # France -> Paris
    key = (2, 4)
    sign = -1.0 if mean_activation_by_hand(lm, fact, *key) < 0 else 1.0
    answer = encode(lm, fact.prompts()[0], fact.object).answer_ids[0]
    weight = lm.ffn_out(2).weight
    saved = weight[:, 4].detach().clone()
    direction = lm.model.get_output_embeddings().weight[answer].detach() / lm.model.model.norm.weight.detach()
    try:
        with torch.no_grad():  # the slot times the sign of the activation now points at the answer
            weight[:, 4] = sign * 100 * direction / direction.norm()
        entry = fact_vocabulary(lm, fact, [key], seed=0)
        vocabulary = entry.knowledge[0]
        assert vocabulary.sign == sign  # the activation's sign does not depend on the slot
        assert vocabulary.answer_rank == 0 and vocabulary.promoted[0][0] == answer
        assert vocabulary.answer_suppressed_rank == vocabulary.vocab_size - 1
        rows = vocabulary_rows([entry])
        values = {(r["variant"], r["metric"]): r["value"] for r in rows if r["fact_id"]}
        assert values["kn", "answer_top10"] == 1.0 and values["kn", "best_rank"] == 0.0
        assert values["kn", "suppressed_top100"] == 0.0
    finally:
        with torch.no_grad():
            weight[:, 4] = saved


def test_rows_and_summary():
    lm = tiny_lm("llama", layers=3, neurons=16)
    facts = tiny_facts()
    neurons = tiny_neurons(facts)
    found = study_vocabularies(lm, facts, neurons, seed=1)
    rows = vocabulary_rows(found, seed=1, top=10, wide=100)
    assert rows == vocabulary_study(lm, facts, neurons, seed=1)
    assert {r["study"] for r in rows} == {STUDY}
    for entry in found:
        values = {(r["variant"], r["metric"]): r["value"] for r in rows
                  if r["fact_id"] == entry.fact.id and not r["variant"].endswith("_neuron")}
        for variant, neurons_of in (("kn", entry.knowledge), ("random", entry.random)):
            ranks = [v.answer_rank for v in neurons_of]
            assert values[variant, "neurons"] == len(neurons_of)
            assert values[variant, "answer_top10"] == float(min(ranks) < 10)
            assert values[variant, "answer_top100"] == float(min(ranks) < 100)
            assert values[variant, "suppressed_top10"] == float(min(v.answer_suppressed_rank for v in neurons_of) < 10)
            assert values[variant, "best_rank"] == min(ranks)
            assert values[variant, "median_rank"] == statistics.median(ranks)
            assert values[variant, "negative"] == sum(v.sign < 0 for v in neurons_of) / len(neurons_of)
    per_neuron = [r["value"] for r in rows if r["variant"] == "kn_neuron" and r["metric"] == "answer_rank"]
    assert per_neuron == [v.answer_rank for entry in found for v in entry.knowledge]
    raises = [r["value"] for r in rows if r["variant"] == "random_neuron" and r["metric"] == "raises_answer"]
    assert raises == [float(v.answer_logit > 0) for entry in found for v in entry.random]
    summary = vocabulary_summary(rows)
    assert summary["kn"]["answer_top10"] == (summarize(rows, "kn", "answer_top10").mean, len(facts))
    assert summary["kn"]["neuron_rank"] == (statistics.median(per_neuron), len(per_neuron))
    assert summary["random"]["raises_answer"] == (sum(raises) / len(raises), len(raises))
    assert summary["random"]["best_rank"][0] == statistics.median(
        min(v.answer_rank for v in entry.random) for entry in found)
    params = {r["metric"]: r["value"] for r in rows if r["variant"] == "params"}
    assert params == {"seed": 1, "top": 10, "wide": 100, "vocab_size": lm.model.config.vocab_size}


def test_random_control_is_seeded_per_fact_and_order_free():
    lm = tiny_lm("llama", layers=3, neurons=16)
    facts = tiny_facts()
    neurons = tiny_neurons(facts)
    forward = {f.fact.id: [v.key for v in f.random] for f in study_vocabularies(lm, facts, neurons, seed=5)}
    backward = {f.fact.id: [v.key for v in f.random] for f in study_vocabularies(lm, facts[::-1], neurons, seed=5)}
    assert forward == backward
    other = {f.fact.id: [v.key for v in f.random] for f in study_vocabularies(lm, facts, neurons, seed=6)}
    assert other != forward
    for fact in facts:
        kn = [n.key for n in neurons[fact.id]]
        assert forward[fact.id] == random_control(kn, lm.n_neurons, fact_rng(5, fact.id))
        assert [layer for layer, _ in forward[fact.id]] == [layer for layer, _ in kn]  # same layers
        assert not set(forward[fact.id]) & set(kn)


def test_facts_without_neurons_are_skipped():
    lm = tiny_lm("llama", layers=3, neurons=16)
    facts = tiny_facts()
    neurons = {facts[0].id: tiny_neurons(facts)[facts[0].id], facts[1].id: []}
    seen = []
    rows = vocabulary_study(lm, facts, neurons, on_fact=seen.append)
    assert seen == facts
    assert {r["fact_id"] for r in rows if r["fact_id"]} == {facts[0].id}
    assert math.isnan(vocabulary_summary(vocabulary_study(lm, facts, {}))["kn"]["answer_top10"][0])
