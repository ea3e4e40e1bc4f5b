"""Discrimination: per-fact ROC AUC of the knowledge neurons' activation, checked by hand (own hook, pairwise
AUC), on tiny models of both kinds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kneuron.attribution import Neuron
from kneuron.facts import encode
from kneuron.studies import prompt_discrimination, roc_auc, sentence_discrimination, summarize
from kneuron.studies.discrimination import sentence_inputs
from studies.conftest import activation_by_hand, auc_by_hand
from tiny_models import tiny_lm


@pytest.fixture(params=["llama", "bert"])
def tiny(request):
    return tiny_lm(request.param, layers=3, neurons=16, dtype=torch.float64)


def values(rows, variant, metric):
    return {r["fact_id"]: r["value"] for r in rows if r["variant"] == variant and r["metric"] == metric}


def test_roc_auc_matches_pairwise_count():
    pos, neg = [0.3, 0.9, 0.5, 0.5], [0.1, 0.5, 0.7]
    assert roc_auc(pos, neg) == pytest.approx(auc_by_hand(pos, neg))
    assert roc_auc([1.0], [0.0]) == 1.0 and roc_auc([0.0], [1.0]) == 0.0
    assert np.isnan(roc_auc([], [1.0]))


def test_prompt_auc_matches_hand_computation(tiny, facts, neurons):
    baseline = {f.id: [Neuron(1, 7), Neuron(2, 0)] for f in facts}
    rows = prompt_discrimination(tiny, facts, neurons, baseline, generic=[(0, 3)])
    queries = {f.id: [encode(tiny, p, f.object) for p in f.prompts()] for f in facts}

    def score(query, keys):
        return np.mean([float(activation_by_hand(tiny, query.input_ids, layer, index)[query.position])
                        for layer, index in keys])

    for variant, sets in (("kn", {f: [n.key for n in ns] for f, ns in neurons.items()}),
                          ("baseline", {f: [n.key for n in ns] for f, ns in baseline.items()}),
                          ("kn_no_generic", {f: [n.key for n in ns if n.key != (0, 3)] for f, ns in neurons.items()})):
        found = values(rows, variant, "auc")
        for fact in facts[:3]:
            keys = sets[fact.id]
            own = [score(q, keys) for q in queries[fact.id]]
            others = [score(q, keys) for f in facts if f.id != fact.id for q in queries[f.id]]
            assert found[fact.id] == pytest.approx(auc_by_hand(own, others), abs=1e-12), (variant, fact.id)
            # signed: each neuron times the sign of its mean activation on the fact's own prompts
            signs = [1.0 if np.mean([score(q, [key]) for q in queries[fact.id]]) >= 0 else -1.0 for key in keys]

            def signed(query, keys=keys, signs=signs):
                return np.mean([sign * score(query, [key]) for sign, key in zip(signs, keys, strict=True)])

            own = [signed(q) for q in queries[fact.id]]
            others = [signed(q) for f in facts if f.id != fact.id for q in queries[f.id]]
            assert values(rows, variant, "auc_signed")[fact.id] == pytest.approx(auc_by_hand(own, others), abs=1e-12)
    assert summarize(rows, "kn", "auc").n == len(facts)


def test_one_neuron_shared_by_all_facts_averages_to_chance(facts):
    # every fact scores its prompts with the same neuron and all bags have 3 prompts: each cross-fact pair of
    # prompts is counted once in favour of one fact and once against the other, so the mean AUC is exactly 0.5
    lm = tiny_lm("llama", layers=2, neurons=16)
    rows = prompt_discrimination(lm, facts, {f.id: [Neuron(1, 0)] for f in facts})
    aucs = values(rows, "kn", "auc")
    assert len(aucs) == len(facts) and len(set(aucs.values())) > 1
    assert np.mean(list(aucs.values())) == pytest.approx(0.5)


def test_sentence_positions_last_token_for_causal_all_own_tokens_for_masked():
    causal, masked = tiny_lm("llama"), tiny_lm("bert")
    (ids, position), = sentence_inputs(causal, ["Paris is the capital of France ."])
    assert position == len(ids) - 1 and causal.tokenizer.convert_ids_to_tokens([int(ids[-1])]) == ["."]
    (ids, positions), = sentence_inputs(masked, ["Paris is the capital of France ."])
    tokens = masked.tokenizer.convert_ids_to_tokens(ids.tolist())
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert positions == list(range(1, len(ids) - 1))


def test_sentence_auc_matches_hand_computation(tiny, facts, neurons):
    positive = ["Paris is the capital of France .", "France has its capital in Paris ."]
    negative = ["France is a country in Europe .", "The French speak French in France .", "France is big ."]
    fact = facts[0]
    rows = sentence_discrimination(tiny, [fact, facts[1]], neurons,
                                   sentences=lambda f: (positive, negative) if f is fact else ([], []))
    assert {r["fact_id"] for r in rows} == {fact.id}  # a fact without sentences is skipped
    keys = [n.key for n in neurons[fact.id]]

    def score(sentence):
        ids = torch.tensor(tiny.tokenizer(sentence)["input_ids"])
        per_neuron = [activation_by_hand(tiny, ids, layer, index) for layer, index in keys]
        if tiny.kind == "causal":
            return np.mean([float(a[-1]) for a in per_neuron])
        return np.mean([float(a[1:-1].mean()) for a in per_neuron])  # without [CLS] and [SEP]

    pos, neg = [score(s) for s in positive], [score(s) for s in negative]
    assert values(rows, "kn", "sentence_positive")[fact.id] == pytest.approx(np.mean(pos))
    assert values(rows, "kn", "sentence_negative")[fact.id] == pytest.approx(np.mean(neg))
    assert values(rows, "kn", "sentence_auc")[fact.id] == pytest.approx(auc_by_hand(pos, neg))
    # signed: directions from the fact's own prompts at the answer position
    signs = []
    for layer, index in keys:
        own = []
        for prompt in fact.prompts():
            query = encode(tiny, prompt, fact.object)
            own.append(float(activation_by_hand(tiny, query.input_ids, layer, index)[query.position]))
        signs.append(-1.0 if np.mean(own) < 0 else 1.0)

    def signed(sentence):
        ids = torch.tensor(tiny.tokenizer(sentence)["input_ids"])
        per_neuron = [sign * activation_by_hand(tiny, ids, layer, index)
                      for sign, (layer, index) in zip(signs, keys, strict=True)]
        if tiny.kind == "causal":
            return np.mean([float(a[-1]) for a in per_neuron])
        return np.mean([float(a[1:-1].mean()) for a in per_neuron])

    expected = auc_by_hand([signed(s) for s in positive], [signed(s) for s in negative])
    assert values(rows, "kn", "sentence_auc_signed")[fact.id] == pytest.approx(expected)


def test_builtin_sentences_are_the_default():
    from kneuron.facts import discrimination_facts, discrimination_sentences

    lm = tiny_lm("llama", layers=2, neurons=8)
    fact = discrimination_facts()[0]
    rows = sentence_discrimination(lm, [fact], {fact.id: [Neuron(1, 2)]})
    assert len(discrimination_sentences(fact)[0]) > 0
    assert {r["metric"] for r in rows} == {"sentence_positive", "sentence_negative", "sentence_auc",
                                           "sentence_auc_signed"}


def test_discrimination_is_both_studies_with_the_prompts_read_once(tiny, facts, neurons):
    from kneuron.studies import discrimination

    baseline = {f.id: [Neuron(1, 7), Neuron(2, 0)] for f in facts}
    positive = ["Paris is the capital of France .", "France has its capital in Paris ."]
    negative = ["France is a country in Europe .", "France is big ."]

    def sentences(fact):
        return (positive, negative) if fact.relation == "capital" else ([], [])

    separate = (prompt_discrimination(tiny, facts, neurons, baseline, generic=[(0, 3)])
                + sentence_discrimination(tiny, facts, neurons, baseline, sentences=sentences, generic=[(0, 3)]))
    rows_read = []
    handle = tiny.model.register_forward_pre_hook(
        lambda _m, _a, kwargs: rows_read.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        together = discrimination(tiny, facts, neurons, baseline, sentences=sentences, generic=[(0, 3)])
    finally:
        handle.remove()
    key = lambda r: (r["variant"], r["fact_id"], r["metric"])  # noqa: E731
    assert sorted(map(key, together)) == sorted(map(key, separate))
    expected = {key(r): r["value"] for r in separate}
    assert {key(r): r["value"] for r in together} == pytest.approx(expected, rel=1e-12)
    prompts = sum(len(f.prompts()) for f in facts)
    capital_sentences = sum(len(positive) + len(negative) for f in facts if f.relation == "capital")
    assert sum(rows_read) == prompts + capital_sentences  # every prompt and every sentence read once
