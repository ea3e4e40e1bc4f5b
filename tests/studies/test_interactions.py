"""Neuron interactions: singles, pairs, all and the cumulative curves checked against a by-hand computation (its own
hook, its own softmax, one prompt and one neuron set at a time) on tiny models of both kinds; the batched variants
against one-by-one suppression on every family; the synergy / redundancy bookkeeping, the neuron counts for
−50% / −90%, the cap and the seeded random control on constructed numbers; the model unchanged after an exception."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kneuron.attribution import Neuron
from kneuron.facts import Fact
from kneuron.interventions.edits import fingerprint
from kneuron.models import suppress_patches
from kneuron.studies import suppress_amplify
from kneuron.studies.interactions import (
    FactPlan,
    canonical,
    classify,
    curve_summary,
    fact_rows,
    interactions_study,
    neurons_needed,
    plan_fact,
    ranked,
    study_params,
    suppressed_probabilities,
)
from kneuron.studies.metrics import answer_probabilities, fact_rng
from kneuron.studies.suppress_amplify import encode_facts, random_control
from studies.conftest import probability_by_hand
from tiny_models import EAGER_ONLY, FAMILIES, tiny_lm


def five_neurons(i: int) -> list[Neuron]:
    """Five neurons over three layers, listed out of score order (rank 1 is the layer-2 neuron scored 0.9)."""
    return [Neuron(1, (3 * i + 2) % 16, 0.7), Neuron(0, (i + 4) % 16, 0.3), Neuron(2, (2 * i + 1) % 16, 0.9),
            Neuron(1, (3 * i + 9) % 16, 0.1), Neuron(2, (5 * i + 6) % 16, 0.5)]


@pytest.fixture
def five(facts) -> dict[str, list[Neuron]]:
    return {fact.id: five_neurons(i) for i, fact in enumerate(facts)}


def values(rows, fact_id, variant):
    return {r["metric"]: r["value"] for r in rows if r["fact_id"] == fact_id and r["variant"] == variant}


def hand_delta(lm, fact: Fact, neurons) -> float:
    """Mean over the fact's prompts of (p_after - p_before) / p_before, by hand."""
    changes = []
    for prompt in fact.prompts():
        before = probability_by_hand(lm, prompt, fact.object)
        changes.append((probability_by_hand(lm, prompt, fact.object, list(neurons)) - before) / before)
    return float(np.mean(changes))


# ------------------------------------------------------------------------------------------------ against the hand

@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_singles_pairs_all_and_curves_match_hand_computation(family, facts, five):
    lm = tiny_lm(family, layers=3, neurons=16, dtype=torch.float64)
    chosen = [facts[0], facts[2]]  # Denmark -> Copenhagen: a two-token answer
    rows = interactions_study(lm, chosen, five, cap=4, seed=3, batch_size=5)
    for fact in chosen:
        order = ranked(five[fact.id])
        assert [s for s in order] == [n.key for n in sorted(five[fact.id], key=lambda n: -n.score)]
        kn, single, pair = values(rows, fact.id, "kn"), values(rows, fact.id, "single"), values(rows, fact.id, "pair")
        singles = [hand_delta(lm, fact, [key]) for key in order[:4]]
        assert [single[f"delta:{r}"] for r in range(1, 5)] == pytest.approx(singles, rel=1e-9, abs=1e-12)
        assert len(single) == 4
        for a in range(4):
            for b in range(a + 1, 4):
                both = hand_delta(lm, fact, [order[a], order[b]])
                name = f"{a + 1}|{b + 1}"
                assert pair[f"delta:{name}"] == pytest.approx(both, rel=1e-9, abs=1e-12)
                assert pair[f"interaction:{name}"] == pytest.approx(both - singles[a] - singles[b], abs=1e-12)
        assert len([m for m in pair if m.startswith("delta:")]) == 6  # 4 neurons, 6 pairs
        assert kn["suppress_all"] == pytest.approx(hand_delta(lm, fact, order), rel=1e-9, abs=1e-12)
        assert kn["neurons"] == 5 and kn["capped"] == 4
        curve = [hand_delta(lm, fact, order[:k]) for k in range(1, 6)]
        assert [kn[f"curve:{k}"] for k in range(1, 6)] == pytest.approx(curve, rel=1e-9, abs=1e-12)
        controls = random_control(order, lm.n_neurons, fact_rng(3, fact.id))
        random = values(rows, fact.id, "random")
        assert [random[f"curve:{k}"] for k in range(1, 6)] == pytest.approx(
            [hand_delta(lm, fact, controls[:k]) for k in range(1, 6)], rel=1e-9, abs=1e-12)
        for level in (50, 90):
            expected = neurons_needed(curve, level / 100)
            assert kn[f"needed_{level}"] == pytest.approx(expected, nan_ok=True)
            assert kn[f"reached_{level}"] == float(not math.isnan(expected))


def test_all_together_is_the_suppress_study_value(facts, five):
    """Δ(all) is the same measure as the suppress / amplify study's kn suppression of the fact."""
    lm = tiny_lm("llama", layers=3, neurons=16, dtype=torch.float64)
    ours = interactions_study(lm, facts, five)
    theirs = suppress_amplify(lm, facts, five, other_facts=0)
    suppress = {r["fact_id"]: r["value"] for r in theirs if r["variant"] == "kn" and r["metric"] == "suppress"}
    for fact in facts:
        assert values(ours, fact.id, "kn")["suppress_all"] == pytest.approx(suppress[fact.id], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_variants_equal_one_set_at_a_time(family, facts):
    """Every family (causal ones from a cached prefix, masked ones whole): the probabilities of many suppressed
    sets batched together equal answer_probabilities under suppress_patches, one set at a time."""
    lm = tiny_lm(family, layers=3, neurons=16, dtype=torch.float64)
    sets = [(), ((2, 3),), ((0, 1), (2, 5)), ((0, 4), (1, 7), (2, 9)), ((1, 2),)]
    for fact in (facts[0], facts[2]):
        queries = encode_facts(lm, [fact])[fact.id]
        batched = suppressed_probabilities(lm, queries, sets, batch_size=2)  # chunks reuse the prefix
        alone = np.array([answer_probabilities(lm, queries, suppress_patches(s)) for s in sets])
        # eager attention (gpt_neo, gemma2, bloom) takes its softmax in float32, whose rounding depends on the width
        assert batched == pytest.approx(alone, rel=1e-6 if family in EAGER_ONLY else 1e-9)
        assert not np.allclose(batched[1:], batched[0])  # the sets do something


# ------------------------------------------------------------------------------------------------ bookkeeping

A, B, C, R1, R2, R3 = (2, 1), (2, 2), (1, 0), (2, 9), (2, 8), (1, 7)


def constructed_plan() -> tuple[FactPlan, dict]:
    """Three neurons a, b, c with chosen ratios p_after / p_before on two prompts (p_before 0.4 and 0.2)."""
    plan = FactPlan(kn=(A, B, C), capped=(A, B, C), curve=(A, B, C), random=(R1, R2, R3))
    before = np.array([0.4, 0.2])
    ratios = {(): [1, 1], (A,): [0.8, 0.8], (B,): [0.9, 0.7], (C,): [1.0, 1.0],
              (A, B): [0.5, 0.5],        # Δ -0.5 < -0.2 - 0.2: synergistic by 0.1
              (A, C): [0.81, 0.79],      # Δ -0.2 = -0.2 + 0: additive
              (B, C): [0.95, 0.95],      # Δ -0.05 > -0.2 + 0: redundant by 0.15
              (A, B, C): [0.05, 0.1],    # Δ -0.925
              (R1,): [1.0, 0.98], (R1, R2): [0.97, 0.99], (R1, R2, R3): [0.9, 0.96]}
    return plan, {canonical(s): before * np.array(r, dtype=np.float64) for s, r in ratios.items()}


def test_interaction_shares_and_counts_on_constructed_numbers():
    plan, probabilities = constructed_plan()
    assert set(plan.sets()) == set(probabilities)
    fact = Fact("X", "rel", "Y", ("[X] is [Y].",))
    rows = fact_rows(fact, plan, probabilities, tolerance=0.02)
    pair = values(rows, fact.id, "pair")
    assert pair["interaction:1|2"] == pytest.approx(-0.1)
    assert pair["interaction:1|3"] == pytest.approx(0.0, abs=1e-12)
    assert pair["interaction:2|3"] == pytest.approx(0.15)
    # multiplicative null, per prompt: ratio_a * ratio_b; for (a, b) mean(0.72, 0.56) - 1 = -0.36
    assert pair["interaction_mult:1|2"] == pytest.approx(-0.5 + 0.36)
    shares = values(rows, fact.id, "pairs")
    assert shares == pytest.approx({"count": 3, "synergistic": 1 / 3, "redundant": 1 / 3, "additive": 1 / 3,
                                    "mean_interaction": 0.05 / 3})
    kn, random = values(rows, fact.id, "kn"), values(rows, fact.id, "random")
    assert [kn[f"curve:{k}"] for k in (1, 2, 3)] == pytest.approx([-0.2, -0.5, -0.925])
    assert (kn["needed_50"], kn["needed_90"], kn["reached_50"], kn["reached_90"]) == (2, 3, 1, 1)
    assert kn["suppress_all"] == pytest.approx(-0.925)
    assert math.isnan(random["needed_50"]) and math.isnan(random["needed_90"])
    assert (random["reached_50"], random["reached_90"]) == (0, 0)
    # a looser tolerance makes the synergistic pair additive, the redundant one stays
    loose = values(fact_rows(fact, plan, probabilities, tolerance=0.12), fact.id, "pairs")
    assert (loose["synergistic"], loose["redundant"], loose["additive"]) == pytest.approx((0, 1 / 3, 2 / 3))


def test_classify_and_neurons_needed():
    assert classify(-0.03, 0.02) == "synergistic" and classify(0.03, 0.02) == "redundant"
    assert classify(0.02, 0.02) == classify(-0.02, 0.02) == classify(0.0, 0.0) == "additive"
    assert neurons_needed([-0.1, -0.49, -0.5, -0.95], 0.5) == 3
    assert neurons_needed([-0.1, -0.49, -0.5, -0.95], 0.9) == 4
    assert neurons_needed([-0.6, -0.4], 0.5) == 1  # the first k that gets there, even if a later k does not
    assert math.isnan(neurons_needed([-0.1, -0.89], 0.9))
    assert math.isnan(neurons_needed([], 0.5))


def test_ranked_by_score_then_key():
    neurons = [Neuron(1, 4, 0.2), Neuron(0, 9, 0.5), Neuron(0, 2, 0.2), Neuron(3, 1, 0.9)]
    assert ranked(neurons) == [(3, 1), (0, 9), (0, 2), (1, 4)]
    assert ranked([(2, 1), (0, 5), (2, 1)]) == [(0, 5), (2, 1)]  # plain keys: by key, duplicates once


def test_cap_and_max_k(facts, five):
    lm = tiny_lm("llama", layers=3, neurons=16, dtype=torch.float64)
    one = {facts[0].id: five[facts[0].id], facts[1].id: [Neuron(2, 3, 1.0)], facts[2].id: []}
    rows = interactions_study(lm, facts[:3], one, cap=3, max_k=2, tolerance=0.05, seed=1)
    first = facts[0].id
    assert sorted(values(rows, first, "single")) == ["delta:1", "delta:2", "delta:3"]
    assert sorted(m for m in values(rows, first, "pair") if m.startswith("delta:")) == [
        "delta:1|2", "delta:1|3", "delta:2|3"]
    assert values(rows, first, "pairs")["count"] == 3
    assert sorted(m for m in values(rows, first, "kn") if m.startswith("curve:")) == ["curve:1", "curve:2"]
    assert sorted(m for m in values(rows, first, "random") if m.startswith("curve:")) == ["curve:1", "curve:2"]
    assert values(rows, first, "kn")["neurons"] == 5  # all together: all five, whatever the caps
    assert values(rows, first, "kn")["suppress_all"] == pytest.approx(hand_delta(lm, facts[0], ranked(one[first])),
                                                                      rel=1e-9, abs=1e-12)
    # one neuron: no pair, no share; no neuron: skipped
    assert values(rows, facts[1].id, "pairs") == {"count": 0}
    assert not [r for r in rows if r["fact_id"] == facts[2].id]
    assert study_params(rows) == {"cap": 3, "max_k": 2, "tolerance": 0.05, "seed": 1, "facts": 2}
    assert study_params(interactions_study(lm, facts[:1], one))["max_k"] == 0  # 0 = all
    with pytest.raises(ValueError):
        interactions_study(lm, facts[:1], one, cap=0)


def test_random_control_is_seeded_per_fact(facts, five):
    lm = tiny_lm("llama", layers=3, neurons=16, dtype=torch.float64)
    fact = facts[4]
    plan = plan_fact(five[fact.id], lm.n_neurons, fact_rng(7, fact.id))
    assert plan.random == tuple(random_control(plan.curve, lm.n_neurons, fact_rng(7, fact.id)))
    assert [layer for layer, _ in plan.random] == [layer for layer, _ in plan.curve]
    assert not set(plan.random) & set(plan.kn) and len(set(plan.random)) == 5
    assert plan_fact(five[fact.id], lm.n_neurons, fact_rng(8, fact.id)).random != plan.random
    key = lambda r: (r["variant"], r["fact_id"], r["metric"])  # noqa: E731
    forward = {key(r): r["value"] for r in interactions_study(lm, facts, five, seed=7)}
    backward = {key(r): r["value"] for r in interactions_study(lm, facts[::-1], five, seed=7)}
    assert forward == pytest.approx(backward, nan_ok=True)
    other = {key(r): r["value"] for r in interactions_study(lm, facts, five, seed=8)}
    assert other[("random", fact.id, "curve:5")] != forward[("random", fact.id, "curve:5")]
    assert other[("kn", fact.id, "curve:5")] == forward[("kn", fact.id, "curve:5")]


def test_curve_summary_means_over_the_facts_that_reach_k():
    rows = [{"study": "interactions", "variant": "kn", "relation": "r", "fact_id": f, "metric": f"curve:{k}",
             "value": v} for f, curve in (("a", [-0.2, -0.6]), ("b", [-0.4])) for k, v in enumerate(curve, 1)]
    assert curve_summary(rows) == {1: (pytest.approx(-0.3), 2), 2: (pytest.approx(-0.6), 1)}
    assert curve_summary(rows, "random") == {}


# ------------------------------------------------------------------------------------------------ model unchanged

class Boom(RuntimeError):
    pass


def _hook_count(lm) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) + len(m._forward_pre_hooks_with_kwargs)
               for m in lm.model.modules())


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_model_unchanged_after_the_study_and_after_an_exception_midway(family, facts, five):
    lm = tiny_lm(family, layers=3, neurons=16, dtype=torch.float64)
    queries = encode_facts(lm, facts[:1])[facts[0].id]
    clean = answer_probabilities(lm, queries)
    before = fingerprint(lm, fresh=True)
    interactions_study(lm, facts[:2], five)
    assert fingerprint(lm, fresh=True) == before and _hook_count(lm) == 0
    calls = [0]

    def explode(*_args):  # raises inside a patched forward pass, in the middle of the first fact
        calls[0] += 1
        if calls[0] == 4:
            raise Boom("midway")

    handle = lm.block(lm.n_layers - 1).register_forward_pre_hook(explode)
    try:
        with pytest.raises(Boom):
            interactions_study(lm, facts[:2], five, batch_size=3)
    finally:
        handle.remove()
    assert _hook_count(lm) == 0
    with pytest.raises(Boom):  # and raised between facts
        interactions_study(lm, facts[:2], five, on_fact=lambda _fact: (_ for _ in ()).throw(Boom("between")))
    assert fingerprint(lm, fresh=True) == before and _hook_count(lm) == 0
    assert np.array_equal(answer_probabilities(lm, queries), clean)
