"""find_knowledge_neurons and attribute_bag with estimator=: the default is today's exact integrated gradients
bit for bit, a name or an object gives what that estimator and refine give, and the params record it."""

from __future__ import annotations

import pytest
import torch

from kneuron.attribution import (
    GradientTimesActivation,
    IntegratedGradients,
    attribute_bag,
    find_knowledge_neurons,
    integrated_gradients_many,
    refine,
)
from kneuron.errors import KneuronError
from tiny_models import tiny_lm

PROMPTS = ["The capital of France is", "The capital city of France is", "France has its capital at"]


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama", dtype=torch.float64, layers=3)


def same_scores(a, b) -> bool:
    return all(torch.equal(x.scores, y.scores) for x, y in zip(a, b, strict=True)) and len(a) == len(b)


def test_the_default_is_exact_ig_and_records_it(lm):
    kn = find_knowledge_neurons(lm, PROMPTS, "Paris", steps=4, alphas="midpoint")
    direct = integrated_gradients_many(lm, PROMPTS, "Paris", steps=4, alphas="midpoint")
    assert same_scores(kn.scores, direct)
    assert kn.neurons == refine(direct).neurons
    assert {k: kn.params[k] for k in ("estimator", "steps", "alphas", "objective")} == {
        "estimator": "ig", "steps": 4, "alphas": "midpoint", "objective": "prob"}
    by_name = find_knowledge_neurons(lm, PROMPTS, "Paris", steps=4, alphas="midpoint", estimator="ig")
    by_object = find_knowledge_neurons(lm, PROMPTS, "Paris", estimator=IntegratedGradients(4, "midpoint"))
    for other in (by_name, by_object):
        assert same_scores(other.scores, kn.scores) and other.params == kn.params


def test_gxa_by_name_or_object_equals_the_estimator_and_refine(lm):
    direct = GradientTimesActivation("logprob").attribute(lm, PROMPTS, "Paris")
    expected = refine(direct)
    for estimator in ("gxa", GradientTimesActivation("logprob")):
        kn = find_knowledge_neurons(lm, PROMPTS, "Paris", objective="logprob", estimator=estimator)
        assert same_scores(kn.scores, direct) and kn.neurons == expected.neurons
        assert kn.params["estimator"] == "gxa" and kn.params["objective"] == "logprob" and "alphas" not in kn.params
    bag = attribute_bag(lm, PROMPTS, "Paris", estimator="gxa", layers=[1])
    assert all(not s.scores[[0, 2]].any() and s.scores[1].any() for s in bag)


def test_options_meant_for_the_estimator_object_are_refused(lm):
    with pytest.raises(KneuronError, match="batch_rows belong to the estimator"):
        attribute_bag(lm, PROMPTS, "Paris", estimator=GradientTimesActivation(), batch_rows=4)
    with pytest.raises(KneuronError, match="Unknown estimator 'nope'"):
        find_knowledge_neurons(lm, PROMPTS, "Paris", estimator="nope")
