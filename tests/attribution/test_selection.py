"""Coarse and refined knowledge neurons, the adaptive share rule, and the activation baseline."""

from __future__ import annotations

import pytest
import torch

from kneuron.attribution import (
    KnowledgeNeurons,
    Neuron,
    NeuronScores,
    activation_baseline,
    coarse_neurons,
    find_knowledge_neurons,
    refine,
)
from kneuron.errors import KneuronError
from kneuron.facts import Fact
from tiny_models import tiny_lm


def scores_with(cells: dict[tuple[int, int], float], activations: dict[tuple[int, int], float] | None = None,
                shape: tuple[int, int] = (3, 10)) -> NeuronScores:
    matrix = torch.zeros(shape)
    for key, value in cells.items():
        matrix[key] = value
    acts = torch.zeros(shape)
    for key, value in (activations or {}).items():
        acts[key] = value
    zeros = torch.zeros(shape[0])
    return NeuronScores(matrix, acts, 0.5, zeros, zeros)


def test_coarse_keeps_scores_above_fraction_of_max_best_first():
    s = scores_with({(0, 1): 1.0, (2, 3): 0.25, (1, 4): 0.2, (1, 5): -3.0, (2, 9): 0.5})
    found = coarse_neurons(s, threshold=0.2)
    assert [str(n) for n in found] == ["L0.N1", "L2.N9", "L2.N3"]  # 0.2 itself is not above 0.2 x 1.0
    assert found[0].score == pytest.approx(1.0)
    assert [str(n) for n in coarse_neurons(s, threshold=0.6)] == ["L0.N1"]


def test_coarse_of_all_nonpositive_scores_is_empty():
    assert coarse_neurons(scores_with({(0, 0): -1.0})) == []
    with pytest.raises(KneuronError, match="threshold"):
        coarse_neurons(scores_with({}), threshold=1.5)


def test_refine_with_fixed_share_counts_prompts_strictly_above_share():
    a = scores_with({(0, 1): 1.0, (1, 2): 0.9, (2, 3): 0.8})
    b = scores_with({(0, 1): 1.0, (1, 2): 0.9})
    c = scores_with({(0, 1): 1.0, (2, 5): 0.9})
    kn = refine([a, b, c], share=0.5)
    assert kn.keys == [(0, 1), (1, 2)]  # in 3/3 and 2/3 > 0.5 of the prompts; (2,3),(2,5) in 1/3
    assert refine([a, b, c], share=2 / 3 - 1e-9).keys == [(0, 1), (1, 2)]
    assert refine([a, b, c], share=2 / 3).keys == [(0, 1)]
    assert kn.neurons[0].score == pytest.approx(1.0)  # the mean score over the bag
    assert kn.neurons[1].score == pytest.approx(0.6)
    assert kn.per_layer() == {0: 1, 1: 1}
    assert len(kn.coarse) == 3 and kn.params["share_used"] == 0.5


def test_adaptive_share_lowers_until_two_neurons_survive():
    # ten prompts; neuron A in all, B in 6, C in 5, D in 1: at 0.7 only A; 0.65 still A; at 0.55 A and B
    bag = []
    for i in range(10):
        cells = {(2, 0): 1.0}
        if i < 6:
            cells[(2, 1)] = 0.9
        if i < 5:
            cells[(1, 1)] = 0.8
        if i == 0:
            cells[(0, 0)] = 0.7
        bag.append(scores_with(cells))
    kn = refine(bag, share="adaptive")
    assert kn.keys == [(2, 0), (2, 1)]
    assert kn.params["share_used"] == pytest.approx(0.55)


def test_adaptive_share_raises_until_at_most_five_neurons_survive():
    bag = []
    for i in range(10):
        cells = {(0, j): 1.0 for j in range(4)}  # four neurons in every prompt
        cells |= {(1, j): 0.9 for j in range(4) if i < 8}  # four more in eight prompts
        bag.append(scores_with(cells))
    kn = refine(bag, share="adaptive")
    assert sorted(kn.keys) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert kn.params["share_used"] == pytest.approx(0.8)


def test_refine_bad_input():
    with pytest.raises(KneuronError, match="empty"):
        refine([])
    with pytest.raises(KneuronError, match="share"):
        refine([scores_with({(0, 0): 1.0})], share=1.5)


def test_activation_baseline_picks_largest_mean_activation():
    a = scores_with({}, {(0, 1): 3.0, (1, 1): 1.0, (2, 2): 2.0})
    b = scores_with({}, {(0, 1): 1.0, (1, 1): 5.0})
    found = activation_baseline([a, b], 2)
    assert [n.key for n in found] == [(1, 1), (0, 1)]  # means 3.0 and 2.0; (2, 2) has 1.0
    assert activation_baseline([a], 0) == []


def test_neuron_prints_as_layer_and_index():
    assert str(Neuron(17, 1234, 0.5)) == "L17.N1234"
    kn = KnowledgeNeurons([Neuron(1, 2)], [[Neuron(1, 2)]], Fact("France", "capital", "Paris"))
    assert str(kn) == "KnowledgeNeurons(France -> Paris: L1.N2)"


def test_find_knowledge_neurons_end_to_end_on_a_tiny_model():
    lm = tiny_lm("llama", layers=3)
    fact = Fact("France", "capital", "Paris", ("The capital of [X] is [Y].", "[X] has its capital at [Y].",
                                               "The capital city of [X] is [Y]."))
    kn = find_knowledge_neurons(lm, fact, steps=5, share=0.5)
    assert kn.fact is fact and len(kn.scores) == 3 and len(kn.coarse) == 3
    expected = refine(kn.scores, share=0.5).keys
    assert kn.keys == expected and kn.keys
    loose = find_knowledge_neurons(lm, [p.causal_text for p in fact.prompts()], "Paris", steps=5, share=0.5)
    assert loose.keys == kn.keys
    with pytest.raises(KneuronError, match="answer"):
        find_knowledge_neurons(lm, ["The capital of France is"])
    with pytest.raises(KneuronError, match="empty"):
        find_knowledge_neurons(lm, [], "Paris")
