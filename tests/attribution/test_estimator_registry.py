"""The estimator registry: each estimator's module registers it, the base imports none (no import cycle), and a new
estimator is one class plus one registration, rebuilt from its params as an atlas would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kneuron.attribution.estimator_base import (
    ESTIMATORS,
    Estimator,
    estimator_from_params,
    estimator_named,
    estimator_names,
    has_completeness,
    register_estimator,
)
from kneuron.attribution.estimators import (
    GradientTimesActivation,
    IntegratedGradients,
    LogProbIncrease,
    ScreenedIntegratedGradients,
    TwoStageIntegratedGradients,
)

SOURCE = Path(__file__).resolve().parents[2] / "src"


def test_the_built_ins_are_registered_in_their_listing_order():
    assert list(ESTIMATORS) == ["ig", "gxa", "lpi", "screened-ig", "two-stage-ig"]
    # the screen needs K: --estimator ig --screen K; two-stage-ig screens every layer with its own points
    assert estimator_names() == ["ig", "gxa", "lpi", "two-stage-ig"]
    assert [ESTIMATORS[n] for n in ESTIMATORS] == [IntegratedGradients, GradientTimesActivation, LogProbIncrease,
                                                   ScreenedIntegratedGradients, TwoStageIntegratedGradients]
    assert [has_completeness(n) for n in ESTIMATORS] == [True, False, False, True, True]
    assert has_completeness("unknown")


@pytest.mark.parametrize("module", ["estimator_base", "gradient_times_activation", "log_prob_increase", "screened",
                                    "two_stage", "integrated_gradients", "estimators"])
def test_any_module_imports_first_without_a_cycle(module):
    code = (f"import kneuron.attribution.{module}\n"
            "from kneuron.attribution.estimator_base import ESTIMATORS\n"
            "print(','.join(ESTIMATORS))")
    env = {**os.environ, "PYTHONPATH": str(SOURCE), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ig,gxa,lpi,screened-ig,two-stage-ig"


def test_a_new_estimator_is_one_class_and_one_registration(monkeypatch):
    monkeypatch.setattr("kneuron.attribution.estimator_base.ESTIMATORS", dict(ESTIMATORS))

    @register_estimator
    class Halved(Estimator):
        name = "halved"

        def __init__(self, objective: str = "prob") -> None:
            self.objective = objective

        def params(self):
            return {"estimator": self.name, "objective": self.objective}

        def attribute(self, lm, prompts, answer=None, *, layers=None, on_prompt=None):
            return GradientTimesActivation(self.objective).attribute(lm, prompts, answer, layers=layers)

    assert "halved" in estimator_names()
    made = estimator_named("halved", objective="logprob", steps=20)  # settings it does not take are ignored
    assert made == Halved("logprob") and estimator_from_params(made.params()) == made
    assert not Halved.has_completeness


def test_existing_params_rebuild_the_same_estimators():
    """What atlases store (unchanged): each built-in's params rebuild it."""
    for estimator in (IntegratedGradients(), IntegratedGradients(5, "gauss", "logprob", norm="live"),
                      GradientTimesActivation(), GradientTimesActivation("logprob", norm="frozen"), LogProbIncrease(),
                      ScreenedIntegratedGradients(3, IntegratedGradients(8))):
        assert estimator_from_params(estimator.params()) == estimator
    assert IntegratedGradients().params() == {"estimator": "ig", "steps": 20, "alphas": "right", "objective": "prob"}
    assert GradientTimesActivation().params() == {"estimator": "gxa", "objective": "prob"}
    assert LogProbIncrease().params() == {"estimator": "lpi"}
    assert ScreenedIntegratedGradients(2).params() == {"estimator": "ig", "steps": 20, "alphas": "right",
                                                       "objective": "prob", "screen": 2, "screen_estimator": "gxa"}
