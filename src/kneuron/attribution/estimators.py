"""Attribution estimators behind one interface: swap integrated gradients for a cheaper estimate by one name.

Every estimator is an object with the same call (Captum's design)::

    estimator.attribute(lm, prompts, answer) -> list[NeuronScores]

and records its own parameters (:meth:`Estimator.params`), which a run stores in its atlas. Whatever the
estimator, the scores are a (layers, neurons) float64 matrix per prompt at the answer position, so
:func:`~kneuron.attribution.coarse_neurons`, :func:`~kneuron.attribution.refine` and the studies work on any of
them unchanged.

* :class:`IntegratedGradients` (``"ig"``): the paper's attribution, exact; ``alphas="gauss"`` is the same integral
  by Gauss–Legendre quadrature with few points.
* :class:`GradientTimesActivation` (``"gxa"``): attribution patching, activation × gradient at α = 1, one forward
  and one backward pass per prompt for all layers.
* :class:`LogProbIncrease` (``"lpi"``): Yu & Ananiadou's log-probability increase, each neuron's value read out
  directly through the frozen final norm and the head (causal pre-norm models only; forward passes only, but a
  vocabulary × neurons matrix per layer, so not always cheaper).
* :class:`ScreenedIntegratedGradients`: a cheap estimator picks a bag's K most promising layers, exact
  integrated gradients runs only there (opt-in; see its docstring for when to trust it).
* :class:`TwoStageIntegratedGradients` (``"two-stage-ig"``): every layer screened with a few of integrated
  gradients' own points, the sum finished where a neuron could be coarse (opt-in; adaptive, no fixed K).

The interface and the registry are :mod:`kneuron.attribution.estimator_base`'s; each estimator lives in its own
module, beside the function that computes it, and registers itself there. This module imports each built-in once
(the one line a new built-in estimator adds) and gathers their names.

Example:
    >>> from kneuron.attribution.estimators import estimator_named
    >>> bag = estimator_named("gxa").attribute(lm, ["The capital of France is"], "Paris")
    >>> refine(bag).neurons
"""

from __future__ import annotations

from kneuron.attribution.estimator_base import (
    ESTIMATORS,
    Estimator,
    encode_prompts,
    estimator_from_params,
    estimator_named,
    estimator_names,
    register_estimator,
)

# the built-in estimators, each registered by its own module as it is imported: in the order their names are listed
from kneuron.attribution.integrated_gradients import ALPHA_RULES, IntegratedGradients

# isort: split
from kneuron.attribution.gradient_times_activation import GradientTimesActivation

# isort: split
from kneuron.attribution.log_prob_increase import LogProbIncrease
from kneuron.attribution.screened import ScreenedIntegratedGradients, screen_layers
from kneuron.attribution.two_stage import TwoStageIntegratedGradients

__all__ = ["ALPHA_RULES", "ESTIMATORS", "Estimator", "GradientTimesActivation", "IntegratedGradients",
           "LogProbIncrease", "ScreenedIntegratedGradients", "TwoStageIntegratedGradients", "encode_prompts",
           "estimator_from_params", "estimator_named", "estimator_names", "register_estimator", "screen_layers"]
