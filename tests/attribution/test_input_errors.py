"""A caller's bad input to attribution is an InputError (a KneuronError and a ValueError), raised before any work."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from kneuron.attribution import (
    GradientTimesActivation,
    IntegratedGradients,
    LogProbIncrease,
    ScreenedIntegratedGradients,
    coarse_neurons,
    estimator_named,
    find_knowledge_neurons,
    integrated_gradients,
    refine,
    screen_layers,
)
from kneuron.attribution.estimators import estimator_from_params
from kneuron.errors import InputError, KneuronError
from tiny_models import tiny_lm

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama", dtype=torch.float64, layers=2)


BAD = {
    "objective": lambda lm: IntegratedGradients(objective="loss"),
    "gxa objective": lambda lm: GradientTimesActivation("probability"),
    "steps": lambda lm: IntegratedGradients(steps=0),
    "float steps": lambda lm: IntegratedGradients(steps=2.0),
    "alpha rule": lambda lm: IntegratedGradients(alphas="trapezoid"),
    "norm rule": lambda lm: IntegratedGradients(norm="loose"),
    "memory size": lambda lm: LogProbIncrease(memory_budget="lots"),
    "screen": lambda lm: ScreenedIntegratedGradients(0),
    "screened screen": lambda lm: ScreenedIntegratedGradients(2, screen=ScreenedIntegratedGradients(2)),
    "estimator name": lambda lm: estimator_named("nope"),
    "screened by name": lambda lm: estimator_named("screened-ig"),
    "no layers": lambda lm: integrated_gradients(lm, PROMPT, "Paris", layers=[]),
    "gxa no layers": lambda lm: GradientTimesActivation().attribute(lm, PROMPT, "Paris", layers=[]),
    "bad layer": lambda lm: integrated_gradients(lm, PROMPT, "Paris", layers=[9]),
    "no answer": lambda lm: integrated_gradients(lm, PROMPT),
    "empty bag": lambda lm: find_knowledge_neurons(lm, [], "Paris"),
    "threshold": lambda lm: coarse_neurons(torch.zeros(2, 3), threshold=2.0),
    "share": lambda lm: refine([], share=2.0),
    "empty screen bag": lambda lm: screen_layers([], 1),
    "object with its settings": lambda lm: find_knowledge_neurons(lm, [PROMPT], "Paris", batch_rows=2,
                                                                  estimator=IntegratedGradients(steps=1)),
    "screen params": lambda lm: estimator_from_params({"estimator": "ig", "steps": -1}),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_an_input_error(lm, case):
    with pytest.warns(FutureWarning) if case == "object with its settings" else nullcontext(), \
            pytest.raises(InputError) as info:
        BAD[case](lm)
    assert isinstance(info.value, KneuronError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)

