"""Suppress / amplify: numbers checked against a by-hand computation on tiny models of both kinds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kneuron.attribution import Neuron
from kneuron.facts import encode
from kneuron.studies import answer_probabilities, random_control, summarize, suppress_amplify
from kneuron.studies.metrics import fact_rng
from kneuron.studies.suppress_amplify import keys_of, other_relation_prompts
from studies.conftest import probability_by_hand
from tiny_models import EAGER_ONLY, tiny_lm


@pytest.fixture(params=["llama", "bert"])
def tiny(request):
    return tiny_lm(request.param, layers=3, neurons=16, dtype=torch.float64)


def by_fact(rows, variant, metric):
    return {r["fact_id"]: r["value"] for r in rows if r["variant"] == variant and r["metric"] == metric}


def test_batched_probabilities_equal_one_by_one(tiny, facts):
    queries = [encode(tiny, p, f.object) for f in facts for p in f.prompts()]
    patches = [(2, 5), (0, 3)]
    from kneuron.models import suppress_patches

    batched = answer_probabilities(tiny, queries, suppress_patches(patches), batch_size=4)
    for query, value, (fact, prompt) in zip(queries, batched, [(f, p) for f in facts for p in f.prompts()],
                                            strict=True):
        assert value == pytest.approx(probability_by_hand(tiny, prompt, fact.object, patches), rel=1e-9)
        assert query.answer_ids  # every prompt encodes


@pytest.mark.parametrize("family", ["gpt2", "falcon", "gemma2", "roberta", "distilbert", "opt"])
def test_padded_batches_equal_one_by_one_across_families(family, facts):
    lm = tiny_lm(family, layers=2, neurons=16, dtype=torch.float64)
    queries = [encode(lm, p, f.object) for f in facts for p in f.prompts()]
    assert len({len(q) for q in queries}) > 2  # several lengths: batches are padded
    from kneuron.models import scale_patches

    batched = answer_probabilities(lm, queries, scale_patches([(1, 5), (0, 3)], 2.0), batch_size=8)
    alone = [answer_probabilities(lm, [q], scale_patches([(1, 5), (0, 3)], 2.0))[0] for q in queries]
    # eager attention (the only kind gemma2 has) takes its softmax in float32, whose rounding depends on the width
    assert batched == pytest.approx(alone, rel=1e-6 if family in EAGER_ONLY else 1e-9)


def test_suppress_and_amplify_match_hand_computation(tiny, facts, neurons):
    rows = suppress_amplify(tiny, facts, neurons, other_facts=2, seed=7)
    suppress, amplify = by_fact(rows, "kn", "suppress"), by_fact(rows, "kn", "amplify")
    assert set(suppress) == {f.id for f in facts}
    for fact in facts:
        keys = [n.key for n in neurons[fact.id]]
        changes = {"set": [], "scale": []}
        for prompt in fact.prompts():
            before = probability_by_hand(tiny, prompt, fact.object)
            for op, value in (("set", 0.0), ("scale", 2.0)):
                after = probability_by_hand(tiny, prompt, fact.object, keys, op, value)
                changes[op].append((after - before) / before)
        assert suppress[fact.id] == pytest.approx(np.mean(changes["set"]), rel=1e-7, abs=1e-12)
        assert amplify[fact.id] == pytest.approx(np.mean(changes["scale"]), rel=1e-7, abs=1e-12)
    # the study's number is the mean over facts, per relation too
    summary = summarize(rows, "kn", "suppress")
    assert summary.mean == pytest.approx(np.mean(list(suppress.values())))
    assert summary.n == len(facts)
    capital = [suppress[f.id] for f in facts if f.relation == "capital"]
    assert summary.per_relation["capital"] == (pytest.approx(np.mean(capital)), 3)


def test_effect_on_other_relations_matches_hand_computation(tiny, facts, neurons):
    rows = suppress_amplify(tiny, facts, neurons, other_facts=2, seed=3)
    other = by_fact(rows, "kn", "suppress_other")
    fact = facts[0]
    picked = other_relation_prompts(fact, facts, 2, fact_rng(3, fact.id))
    assert len(picked) == 2 and all(f.relation != fact.relation for f, _ in picked)
    keys = [n.key for n in neurons[fact.id]]
    changes = []
    for victim, index in picked:
        prompt = victim.prompts()[index]
        before = probability_by_hand(tiny, prompt, victim.object)
        after = probability_by_hand(tiny, prompt, victim.object, keys)
        changes.append((after - before) / before)
    assert other[fact.id] == pytest.approx(np.mean(changes), rel=1e-7, abs=1e-12)


def test_random_control_same_layers_distinct_and_seeded():
    kn = [(2, 1), (2, 4), (0, 3)]
    a = random_control(kn, 16, np.random.default_rng(0))
    assert [layer for layer, _ in a] == [2, 2, 0]
    assert len(set(a)) == 3 and not set(a) & set(kn)
    assert a == random_control(kn, 16, np.random.default_rng(0))
    assert not set(random_control(kn, 16, np.random.default_rng(1), exclude=a)) & set(a)
    # a layer with no free neuron left gives fewer controls rather than a duplicate
    assert random_control([(0, 0), (0, 1)], 2, np.random.default_rng(0)) == []


def test_random_control_is_measured_by_hand_too(tiny, facts, neurons):
    rows = suppress_amplify(tiny, facts, neurons, other_facts=0, seed=11)
    fact = facts[1]
    controls = random_control(keys_of(neurons[fact.id]), tiny.n_neurons, fact_rng(11, fact.id))
    assert by_fact(rows, "random", "neurons")[fact.id] == len(neurons[fact.id])
    changes = []
    for prompt in fact.prompts():
        before = probability_by_hand(tiny, prompt, fact.object)
        changes.append((probability_by_hand(tiny, prompt, fact.object, controls) - before) / before)
    assert by_fact(rows, "random", "suppress")[fact.id] == pytest.approx(np.mean(changes), rel=1e-7, abs=1e-12)
    assert not any(r["metric"].endswith("_other") for r in rows)  # other_facts=0: no effect elsewhere


def test_results_do_not_depend_on_fact_order(facts, neurons):
    lm = tiny_lm("llama", layers=3, neurons=16)
    forward = suppress_amplify(lm, facts, neurons, seed=5)
    backward = suppress_amplify(lm, facts[::-1], neurons, seed=5)
    key = lambda r: (r["variant"], r["fact_id"], r["metric"])  # noqa: E731
    assert {key(r): r["value"] for r in forward} == pytest.approx({key(r): r["value"] for r in backward})
    again = suppress_amplify(lm, facts, neurons, seed=5)
    assert forward == again


def test_without_generic_neurons(tiny, facts, neurons):
    rows = suppress_amplify(tiny, facts, neurons, generic=[(0, 3)], other_facts=0)
    kn, kept = by_fact(rows, "kn", "neurons"), by_fact(rows, "kn_no_generic", "neurons")
    assert all(kept[f] == kn[f] - 1 for f in kn)
    fact = facts[0]
    keys = [n.key for n in neurons[fact.id] if n.key != (0, 3)]
    changes = []
    for prompt in fact.prompts():
        before = probability_by_hand(tiny, prompt, fact.object)
        changes.append((probability_by_hand(tiny, prompt, fact.object, keys) - before) / before)
    assert by_fact(rows, "kn_no_generic", "suppress")[fact.id] == pytest.approx(np.mean(changes), rel=1e-7,
                                                                                   abs=1e-12)
    # a fact whose only neuron is generic has nothing left to patch: counted as 0 neurons, no effect row
    only = {facts[0].id: [Neuron(0, 3)], facts[1].id: [Neuron(0, 3), Neuron(2, 2)]}
    rows = suppress_amplify(tiny, facts[:2], only, generic=[(0, 3)], other_facts=0)
    assert by_fact(rows, "kn_no_generic", "neurons")[facts[0].id] == 0
    assert set(by_fact(rows, "kn_no_generic", "suppress")) == {facts[1].id}


def test_facts_without_neurons_are_skipped(tiny, facts):
    rows = suppress_amplify(tiny, facts[:2], {facts[0].id: [], facts[1].id: [Neuron(2, 1)]}, other_facts=0)
    assert {r["fact_id"] for r in rows} == {facts[1].id}
    assert summarize(rows, "kn", "nothing").n == 0
