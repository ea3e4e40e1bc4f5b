"""Tiny facts spelled in the tiny vocabulary (see tests/tiny_models.py), fixed neuron sets, and a by-hand
probability that shares no code with kneuron.studies (its own hook, its own softmax)."""

from __future__ import annotations

import pytest
import torch

from kneuron.attribution import Neuron
from kneuron.facts import Fact, encode
from kneuron.facts.languages import with_language

CAPITAL = ("The capital of [X] is [Y].", "[X]'s capital city is [Y].", "The capital city of [X] is [Y].")
LANGUAGE = ("The language spoken in [X] is [Y].", "In [X] they speak [Y].", "The official language of [X] is [Y].")
CONTINENT = ("[X] is located in [Y].", "[X] is part of [Y].", "The continent of [X] is [Y].")


def tiny_facts() -> list[Fact]:
    """Eight facts of three relations; Denmark -> Copenhagen is a two-token answer."""
    return (
        [Fact(s, "capital", o, CAPITAL) for s, o in
         [("France", "Paris"), ("Germany", "Berlin"), ("Denmark", "Copenhagen")]]
        + [Fact(s, "language", o, LANGUAGE) for s, o in [("Italy", "Italian"), ("Spain", "Spanish"),
                                                          ("Japan", "Japanese")]]
        + [Fact(s, "continent", o, CONTINENT) for s, o in [("Egypt", "Africa"), ("China", "Asia")]]
    )


# three made-up "languages" spelled in the tiny vocabulary: each its own templates, and its own answers
LANGUAGE_TEMPLATES = {
    "en": CAPITAL,
    "fr": ("[X] capital city is [Y].", "The city of [X] is [Y].", "In [X] the capital is [Y]."),
    "de": ("The capital city of [X] is [Y].", "[X] has the capital [Y]."),
}
LANGUAGE_ANSWERS = {  # "Rome" is "Tiber" in de: the target of an edit has its own form per language
    "France": {"en": "Paris", "fr": "Paris", "de": "Paris"},
    "Germany": {"en": "Berlin", "fr": "Berlin", "de": "Berlin"},
    "Italy": {"en": "Rome", "fr": "Rome", "de": "Tiber"},
}


def multilingual_fact(subject: str, language: str) -> Fact:
    return Fact(subject, "capital", LANGUAGE_ANSWERS[subject][language], LANGUAGE_TEMPLATES[language],
                id=with_language(f"capital:{subject}", language))


def multilingual_done_facts() -> list[Fact]:
    """France in en/fr/de, Germany in en/fr/de, Italy in en/fr (Italy@de not known); China in en only; one fact
    without a language."""
    return ([multilingual_fact(s, code) for s in ("France", "Germany") for code in ("en", "fr", "de")]
            + [multilingual_fact("Italy", "en"), multilingual_fact("Italy", "fr"),
               Fact("China", "capital", "Beijing", CAPITAL, id="capital:China@en"),
               Fact("Japan", "capital", "Tokyo", CAPITAL)])


def multilingual_pool() -> list[Fact]:
    """What the atlas holds: the done facts and Italy@de (dropped, but its answer is Italy's German form)."""
    return [*multilingual_done_facts(), multilingual_fact("Italy", "de")]


def multilingual_neurons() -> dict[str, list[Neuron]]:
    """Fixed knowledge neurons of the multilingual facts, with overlaps across languages chosen by hand."""
    by_hand = {
        "capital:France@en": [(2, 1), (2, 5), (1, 3)],
        "capital:France@fr": [(2, 1), (2, 5), (0, 7)],
        "capital:France@de": [(2, 1), (1, 9)],
        "capital:Germany@en": [(2, 3), (0, 2)],
        "capital:Germany@fr": [(2, 3)],
        "capital:Germany@de": [],  # done, no knowledge neuron
        "capital:Italy@en": [(2, 6)],
        "capital:Italy@fr": [(1, 4)],
        "capital:China@en": [(2, 8)],
        "capital:Japan": [(2, 9)],
    }
    return {fid: [Neuron(layer, index, 1.0) for layer, index in keys] for fid, keys in by_hand.items()}


def tiny_neurons(facts: list[Fact]) -> dict[str, list[Neuron]]:
    """Fixed knowledge neurons: L0.N3 in every fact (a generic neuron), one own neuron in layer 2, and one in
    layer 1 for every second fact."""
    found = {}
    for i, fact in enumerate(facts):
        neurons = [Neuron(2, (2 * i + 1) % 16, 1.0), Neuron(0, 3, 0.5)]
        if i % 2 == 0:
            neurons.append(Neuron(1, (5 * i) % 16, 0.4))
        found[fact.id] = neurons
    return found


@torch.no_grad()
def probability_by_hand(lm, prompt, answer: str, neurons=(), op: str = "set", value: float = 0.0) -> float:
    """P(answer) with ``neurons`` patched at the answer position, with a hand-written hook and softmax."""
    query = encode(lm, prompt, answer)
    handles = []
    for layer in sorted({layer for layer, _ in neurons}):
        chosen = [i for l_, i in neurons if l_ == layer]

        def hook(_module, args, chosen=chosen):
            x = args[0].clone()
            for i in chosen:
                if op == "set":
                    x[0, query.position, i] = value
                else:
                    x[0, query.position, i] = x[0, query.position, i] * value
            return (x, *args[1:])

        handles.append(lm.ffn_out(layer).register_forward_pre_hook(hook))
    try:
        logits = lm.model(input_ids=query.input_ids[None]).logits[0].double()
    finally:
        for handle in handles:
            handle.remove()
    probability = 1.0
    for position, token in zip(query.target_positions, query.answer_ids, strict=True):
        probability *= float(torch.softmax(logits[position], dim=-1)[token])
    return probability


@pytest.fixture
def facts() -> list[Fact]:
    return tiny_facts()


@pytest.fixture
def neurons(facts) -> dict[str, list[Neuron]]:
    return tiny_neurons(facts)


@torch.no_grad()
def activation_by_hand(lm, input_ids: torch.Tensor, layer: int, index: int) -> torch.Tensor:
    """(seq,) activation of neuron ``(layer, index)`` at every position, with a hand-written hook."""
    seen = {}

    def hook(_module, args):
        seen["x"] = args[0][0, :, index].double().clone()

    handle = lm.ffn_out(layer).register_forward_pre_hook(hook)
    try:
        lm.model(input_ids=input_ids[None])
    finally:
        handle.remove()
    return seen["x"]


def auc_by_hand(positive, negative) -> float:
    """Mann-Whitney: the share of (positive, negative) pairs ordered right, ties counting half."""
    pairs = [(p > n) + 0.5 * (p == n) for p in positive for n in negative]
    return sum(pairs) / len(pairs)
