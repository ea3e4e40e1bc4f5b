"""An edit that breaks the model on its fact's own prompts (non-finite or uniform outputs) is refused by
``update_fact``, naming the value that did it, and the model is left bit for bit as it was."""

from __future__ import annotations

import re

import pytest
import torch

from kneuron.attribution import find_knowledge_neurons
from kneuron.attribution.estimators import IntegratedGradients
from kneuron.attribution.health import collapsed
from kneuron.errors import EditBreaksModelError
from kneuron.facts import Fact
from kneuron.interventions import update_fact
from tiny_models import tiny_lm

FACT = Fact("France", "capital", "Paris", templates=("The capital of [X] is [Y].", "[X]'s capital is [Y]."))


@pytest.fixture(scope="module")
def lm_and_neurons():
    lm = tiny_lm("llama")
    return lm, find_knowledge_neurons(lm, FACT, estimator=IntegratedGradients(steps=3), threshold=0.1)


def _state(lm):
    return {name: tensor.clone() for name, tensor in lm.model.state_dict().items()}


@pytest.mark.parametrize(("name", "value", "how"), [
    ("lambda_new", 3e38, "non-finite logits"), ("lambda_new", 1e20, "uniform distribution"),
    ("lambda_old", -3e38, "uniform distribution"),
])
def test_refused_with_the_value_and_the_model_restored(lm_and_neurons, name, value, how):
    lm, kn = lm_and_neurons
    before = _state(lm)
    expected = re.escape(f"{name}={value:g} ") + f".*{how}.*'The capital of France is'"
    with pytest.raises(EditBreaksModelError, match=expected):
        update_fact(lm, kn, None, "Rome", **{name: value})
    after = lm.model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # undo exact, also after the refusal


def test_the_papers_lambdas_pass_and_change_the_model_only_when_applied(lm_and_neurons):
    lm, kn = lm_and_neurons
    before = _state(lm)
    edit = update_fact(lm, kn, None, "Rome", lambda_new=8.0)
    assert all(torch.equal(before[key], tensor) for key, tensor in lm.model.state_dict().items())
    with edit.applied(lm):
        assert not all(torch.equal(before[key], tensor) for key, tensor in lm.model.state_dict().items())


def test_collapsed_against_its_definition():
    """Uniform to within 0.1% of 1/V, by the maximum probability: checked against the distribution itself."""
    vocab = 247
    assert collapsed(torch.zeros(2, vocab))
    assert collapsed(torch.full((1, vocab), 5.0))
    nearly = torch.zeros(1, vocab)
    nearly[0, 0] = 1e-4  # P(top) = e^1e-4 / (V - 1 + e^1e-4) ≈ (1 + 1e-4) / V
    assert collapsed(nearly)
    peaked = torch.zeros(1, vocab)
    peaked[0, 3] = 0.01  # ≈ (1 + 1e-2) / V: a real, if weak, preference
    assert not collapsed(peaked)
    assert not collapsed(torch.randn(1, vocab, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize(("name", "value"), [("lambda_new", 3e38), ("lambda_old", 3e38), ("lambda_new", -3e38)])
def test_a_slot_norm_delta_that_overflows_names_the_lambda(lm_and_neurons, name, value):
    """With scale='slot_norm' the lambda is multiplied by each slot's norm before anything runs: 3e38 times a norm
    overflows to inf there, and the refusal named only "the vector for L1.N16 has non-finite entries", not the
    value that did it (re-probe of issue 27 item 4)."""
    lm, kn = lm_and_neurons
    before = _state(lm)
    with pytest.raises(EditBreaksModelError, match=re.escape(f"{name}={value:g} (scale slot_norm)")):
        update_fact(lm, kn, None, "Rome", scale="slot_norm", **{name: value})
    after = lm.model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
