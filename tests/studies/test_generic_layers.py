"""Generic neurons (flagging, probing each alone) and the layer distribution, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kneuron.attribution import Neuron
from kneuron.errors import KneuronError
from kneuron.facts import Prompt, encode
from kneuron.studies import generic_neurons, generic_rows, layer_distribution, probe_generic, top_layers
from kneuron.studies.generic import last_word
from kneuron.studies.layer_distribution import top_third_share
from studies.conftest import activation_by_hand, probability_by_hand
from tiny_models import tiny_lm


def test_generic_neurons_need_more_than_the_share_of_facts():
    sets = {f"f{i}": [Neuron(0, 3), Neuron(2, i)] for i in range(10)}
    sets["f0"].append(Neuron(1, 1))
    sets["f1"].append(Neuron(1, 1))
    found = generic_neurons(sets, share=0.1)
    assert [(str(g), g.facts, g.share) for g in found] == [("L0.N3", 10, 1.0), ("L1.N1", 2, 0.2)]
    assert [str(g) for g in generic_neurons(sets, share=0.2)] == ["L0.N3"]  # 2 of 10 is not more than 20%
    assert generic_neurons({"a": [Neuron(0, 1)], "b": []}, share=0.1) == []  # one fact is never generic
    with pytest.raises(KneuronError, match="share"):
        generic_neurons(sets, share=1.5)
    rows = generic_rows(found, 0.1)
    assert {(r["variant"], r["metric"]): r["value"] for r in rows}[("L1.N1", "facts")] == 2


def test_last_word_before_the_answer():
    assert last_word(Prompt.from_template("The capital of [X] is [Y].", "France")) == "is"
    assert last_word(Prompt.from_template("[X], capital: [Y]", "France")) == "capital:"


def test_probe_generic_matches_hand_computation(facts, neurons):
    lm = tiny_lm("llama", layers=3, neurons=16, dtype=torch.float64)
    members = dict(neurons)
    members[facts[-1].id] = [Neuron(2, 9)]  # one fact without the generic neuron
    rows = probe_generic(lm, facts, members, generic_neurons(members))
    table = {(r["fact_id"], r["metric"]): r["value"] for r in rows if r["variant"] == "L0.N3"}
    assert table[facts[0].id, "member"] == 1.0 and table[facts[-1].id, "member"] == 0.0
    for fact in (facts[0], facts[-1]):
        by_word: dict[str, list] = {}
        for prompt in fact.prompts():
            before = probability_by_hand(lm, prompt, fact.object)
            after = probability_by_hand(lm, prompt, fact.object, [(0, 3)])
            query = encode(lm, prompt, fact.object)
            activation = float(activation_by_hand(lm, query.input_ids, 0, 3)[query.position])
            by_word.setdefault(last_word(prompt), []).append(((after - before) / before, activation))
        for word, pairs in by_word.items():
            assert table[fact.id, f"suppress_alone:{word}"] == pytest.approx(np.mean([c for c, _ in pairs]), abs=1e-12)
            assert table[fact.id, f"activation:{word}"] == pytest.approx(np.mean([a for _, a in pairs]))
    assert probe_generic(lm, facts, members, []) == []


def test_top_third_of_the_layers():
    assert list(top_layers(30)) == list(range(20, 30))
    assert list(top_layers(12)) == [8, 9, 10, 11]
    assert list(top_layers(2)) == [1]


def test_layer_distribution_by_hand(facts, neurons):
    baseline = {f.id: [Neuron(0, 1), Neuron(0, 2)] for f in facts}
    relations = {f.id: f.relation for f in facts}
    rows = layer_distribution(neurons, 3, baseline, relations=relations, generic=[(0, 3)])
    table = {(r["variant"], r["relation"], r["metric"]): r["value"] for r in rows}
    # 8 facts: L2 own neuron each (8), L0.N3 each (8), L1 for facts 0, 2, 4, 6 (4) -> 20 neurons
    assert table["kn", "", "total"] == 20
    assert [table["kn", "", f"count:{layer}"] for layer in range(3)] == [8, 4, 8]
    assert table["kn", "", "share:2"] == pytest.approx(8 / 20)
    assert table["kn", "", "top_third"] == pytest.approx(8 / 20)
    assert table["kn_no_generic", "", "share:0"] == 0
    assert table["kn_no_generic", "", "top_third"] == pytest.approx(8 / 12)
    assert table["baseline", "", "share:0"] == 1.0 and table["baseline", "", "top_third"] == 0.0
    # per relation: capital has facts 0, 1, 2 -> L2: 3, L0: 3, L1: facts 0 and 2
    assert [table["kn", "capital", f"count:{layer}"] for layer in range(3)] == [3, 2, 3]
    assert top_third_share(neurons, 3) == pytest.approx(0.4)
    assert np.isnan(top_third_share({"a": []}, 3))


def test_coarse_generic_neurons_and_their_last_words(facts):
    from kneuron.studies.generic import coarse_generic_neurons, coarse_rows

    # L0.N1 is coarse in every prompt ending in "is" (2 of the 3 templates of each relation but continent's first
    # two), L2.N2 in one prompt only
    coarse = {f.id: [[Neuron(0, 1)] if last_word(p) == "is" else [Neuron(2, 2 if i == 0 else 3)]
                     for i, p in enumerate(f.prompts())] for f in facts}
    found = coarse_generic_neurons(coarse, share=0.1)
    total = sum(len(f.templates) for f in facts)
    n_is = sum(last_word(p) == "is" for f in facts for p in f.prompts())
    assert str(found[0]) == "L0.N1" and found[0].facts == n_is and found[0].share == pytest.approx(n_is / total)
    assert "L2.N2" not in [str(g) for g in found] or found[-1].facts > 0.1 * total
    table = {(r["variant"], r["metric"]): r["value"] for r in coarse_rows(found, facts, coarse)}
    assert table["L0.N1", "coarse:is"] == table["prompts", "prompts:is"] == n_is
    assert ("L0.N1", "coarse:in") not in table and table["prompts", "prompts:in"] >= 1


def test_word_score_is_one_for_a_neuron_coarse_exactly_where_a_word_ends_the_prompt(facts):
    from kneuron.studies.generic import word_scores

    coarse = {f.id: [[Neuron(0, 1)] + ([Neuron(1, 1)] if i == 0 else []) if last_word(p) == "is" else [Neuron(1, 1)]
                     for i, p in enumerate(f.prompts())] for f in facts}
    scores = word_scores([(0, 1), (1, 1)], facts, coarse)
    assert scores[0, 1] == ("is", 1.0)
    word, score = scores[1, 1]
    assert 0.0 < score < 1.0


def test_a_generic_neurons_share_of_the_facts_is_stored_with_wilsons_interval_and_shown_with_it(facts):
    """Share of 10 facts: 10 of 10 and 2 of 10, Wilson's interval by its formula (z = 1.959964); the measures
    show the stored interval and n, and on an atlas studied before they were stored the bare share with its
    count; the word-score line gives the prompt counts it is made of."""
    import math

    from kneuron.studies.catalog.paper import Generic, share_aggregates
    from kneuron.studies.generic import coarse_generic_neurons, coarse_rows
    from kneuron.studies.intervals import find, format_interval

    sets = {f"f{i}": [Neuron(0, 3), Neuron(2, i)] for i in range(10)}
    sets["f0"].append(Neuron(1, 1))
    sets["f1"].append(Neuron(1, 1))
    rows = generic_rows(generic_neurons(sets, share=0.1), 0.1)
    stored = share_aggregates(rows)
    z = 1.959963984540054
    for name, k in (("L0.N3", 10), ("L1.N1", 2)):
        found = find(stored, name, "share")
        p, n = k / 10, 10
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        assert found.n == 10 and found.mean == pytest.approx(p) and found.method == "wilson"
        assert (found.lo, found.hi) == pytest.approx((centre - half, min(1.0, centre + half)), abs=1e-12)
    lines = dict(Generic().measures(rows, stored))
    assert lines["generic neuron L1.N1: share of the facts"] == format_interval(find(stored, "L1.N1", "share"),
                                                                                percent=True)
    assert "n = 10" in lines["generic neuron L1.N1: share of the facts"]
    assert dict(Generic().measures(rows))["generic neuron L1.N1: share of the facts"] == "20% (2 facts)"
    coarse = {f.id: [[Neuron(0, 1)] if last_word(p) == "is" else [Neuron(2, 3)] for p in f.prompts()]
              for f in facts}
    words = coarse_rows(coarse_generic_neurons(coarse, share=0.1), facts, coarse)
    n_is = sum(last_word(p) == "is" for f in facts for p in f.prompts())
    line = dict(Generic().measures(words))["L0.N1 is coarse where the prompt ends in 'is'"]
    assert line == f"word score 1.00 (coarse in {n_is} of the {n_is} prompts ending in 'is'; {n_is} of its {n_is} " \
                   "coarse prompts)"
