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
* :class:`~kneuron.attribution.log_prob_increase.LogProbIncrease` (``"lpi"``): Yu & Ananiadou's log-probability
  increase, each neuron's value read out directly through the frozen final norm and the head (causal pre-norm
  models only; forward passes only, but a vocabulary × neurons matrix per layer, so not always cheaper).
* :class:`ScreenedIntegratedGradients`: a cheap estimator picks a bag's K most promising layers, exact
  integrated gradients runs only there (opt-in; see its docstring for when to trust it).

Example:
    >>> from kneuron.attribution.estimators import estimator_named
    >>> bag = estimator_named("gxa").attribute(lm, ["The capital of France is"], "Paris")
    >>> refine(bag).neurons
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from kneuron.attribution.ffn_norm import NormRule, check_norm
from kneuron.attribution.gradient_times_activation import gradient_times_activation
from kneuron.attribution.integrated_gradients import (
    ALPHA_RULES,
    AlphaRule,
    Objective,
    alpha_points,
    integrated_gradients_many,
)
from kneuron.attribution.limits import count
from kneuron.attribution.types import NeuronScores
from kneuron.errors import KneuronError
from kneuron.facts.encoding import EncodedQuery, encode
from kneuron.facts.fact import Prompt
from kneuron.models.language_model import LanguageModel

PromptLike = Prompt | str | EncodedQuery
OnPrompt = Callable[[int, NeuronScores], None]


def _check_objective(objective: str) -> str:
    if objective not in ("prob", "logprob"):
        raise KneuronError(f"Unknown objective {objective!r}: use 'prob' or 'logprob'.")
    return objective


def encode_prompts(lm: LanguageModel, prompts: PromptLike | Sequence[PromptLike], answer: str | None,
                   ) -> list[EncodedQuery]:
    """The prompts as encoded queries (a lone prompt is a bag of one); plain prompts need ``answer``."""
    if isinstance(prompts, (str, Prompt, EncodedQuery)):
        prompts = [prompts]
    queries = []
    for prompt in prompts:
        if isinstance(prompt, EncodedQuery):
            queries.append(prompt)
            continue
        if answer is None:
            raise KneuronError("Give the answer to attribute (the correct continuation or mask filler).")
        queries.append(encode(lm, prompt, answer))
    return queries


class Estimator(ABC):
    """What every estimator offers: a name, its parameters, and :meth:`attribute`."""

    #: the estimator's name on the command line (``--estimator NAME``) and in an atlas's params
    name: ClassVar[str]

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The parameters that decide the scores, with ``"estimator": name`` (plain JSON values)."""

    @abstractmethod
    def attribute(self, lm: LanguageModel, prompts: PromptLike | Sequence[PromptLike], answer: str | None = None,
                  *, layers: Sequence[int] | None = None, on_prompt: OnPrompt | None = None,
                  ) -> list[NeuronScores]:
        """Scores of every FFN neuron at each prompt's answer position, in the order of ``prompts``.

        Args:
            lm: the model (left exactly as it was).
            prompts: Prompts, texts (templates with [Y] for masked models, text to continue for causal ones) or
                EncodedQuery objects (then ``answer`` is not needed).
            answer: the correct answer.
            layers: score only these layers (the others score 0).
            on_prompt: called with (index, scores) as each prompt is done.
        """

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={value!r}" for key, value in self.params().items() if key != "estimator")
        return f"{type(self).__name__}({shown})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Estimator) and self.params() == other.params()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.params().items())))


def _norm_param(norm: str | None) -> dict[str, str]:
    return {} if norm is None else {"norm": norm}


class IntegratedGradients(Estimator):
    """The paper's attribution, exact (see :func:`kneuron.attribution.integrated_gradients`).

    Args:
        steps: points of the sum (20 in the paper).
        alphas: "right" (the paper's k/m), "midpoint", "linspace" or "gauss" (``steps``-point Gauss–Legendre).
        objective: "prob" (the paper) or "logprob".
        memory_budget, batch_rows: how the steps are batched (they change no score beyond float rounding).
        norm: "frozen" or "live" for models that normalise each FFN output (Gemma 2/3, OLMo 2; see
            :mod:`kneuron.attribution.ffn_norm`); None is the family's default ("frozen" there, nothing elsewhere).
            Recorded in :meth:`params` only when given; a run records the rule it used on its model.
    """

    name = "ig"

    def __init__(self, steps: int = 20, alphas: AlphaRule = "right", objective: Objective = "prob", *,
                 memory_budget: int | str | None = None, batch_rows: int | None = None,
                 norm: NormRule | None = None) -> None:
        self.steps = count("steps", steps)
        alpha_points(self.steps, alphas)  # checks the rule
        self.alphas = alphas
        self.objective = _check_objective(objective)
        self.memory_budget = memory_budget
        self.batch_rows = batch_rows
        self.norm = check_norm(norm)

    def params(self) -> dict[str, Any]:
        return {"estimator": self.name, "steps": self.steps, "alphas": self.alphas, "objective": self.objective,
                **_norm_param(self.norm)}

    def attribute(self, lm, prompts, answer=None, *, layers=None, on_prompt=None):
        return integrated_gradients_many(
            lm, encode_prompts(lm, prompts, answer), answer, steps=self.steps, objective=self.objective,
            alphas=self.alphas, layers=layers, memory_budget=self.memory_budget, batch_rows=self.batch_rows,
            on_prompt=on_prompt, norm=self.norm)


class GradientTimesActivation(Estimator):
    """Attribution patching: activation × ∂objective/∂activation at the clean activations, every layer from one
    backward pass (:mod:`kneuron.attribution.gradient_times_activation`); the same numbers as one-point (α = 1)
    integrated gradients (with the same ``norm`` rule, see :class:`IntegratedGradients`)."""

    name = "gxa"

    def __init__(self, objective: Objective = "prob", *, norm: NormRule | None = None) -> None:
        self.objective = _check_objective(objective)
        self.norm = check_norm(norm)

    def params(self) -> dict[str, Any]:
        return {"estimator": self.name, "objective": self.objective, **_norm_param(self.norm)}

    def attribute(self, lm, prompts, answer=None, *, layers=None, on_prompt=None):
        return gradient_times_activation(lm, encode_prompts(lm, prompts, answer), objective=self.objective,
                                         layers=layers, answer=answer, on_prompt=on_prompt, norm=self.norm)


def screen_layers(bag: Sequence[NeuronScores], k: int) -> list[int]:
    """The ``k`` layers where a bag's screening scores are largest: each layer ranked by its highest score over
    all prompts of the bag (the score that would set a prompt's coarse threshold), ties by layer; ascending."""
    if not bag:
        raise KneuronError("The bag of prompts is empty: give at least one prompt's scores.")
    k = count("screen", k)
    top = torch.stack([s.scores.double().amax(dim=1) for s in bag]).amax(dim=0)
    order = sorted(range(len(top)), key=lambda layer: (-float(top[layer]), layer))
    return sorted(order[:k])


class ScreenedIntegratedGradients(Estimator):
    """Screen, then exact: ``screen`` scores the whole bag, and exact integrated gradients runs only in the
    ``layers`` layers where the screen's scores are largest (:func:`screen_layers`); other layers score 0.

    Each layer is scaled alone in integrated gradients, so the scores in the chosen layers are exactly those a
    full run gives there. The refined neurons equal a full run's when every prompt's top score and every coarse
    neuron lie in the chosen layers. They differ when the screen leaves out a layer holding a prompt's maximum
    (the coarse threshold, 0.2 of that maximum, then drops and admits neurons the full run does not) or one
    holding a coarse neuron. Trust it where a benchmark on the same model says the screen agrees
    (``benchmarks/bench_estimators.py`` measures the share of facts with identical refined neurons), and keep the
    exact default when every neuron matters. ``attribute`` treats its prompts as one bag (one fact).
    """

    name = "screened-ig"

    def __init__(self, layers: int, ig: IntegratedGradients | None = None, screen: Estimator | None = None) -> None:
        self.k = count("screen", layers)
        self.ig = ig or IntegratedGradients()
        self.screen = screen or GradientTimesActivation(self.ig.objective, norm=self.ig.norm)
        if isinstance(self.screen, ScreenedIntegratedGradients):
            raise KneuronError("A screen cannot itself be screened: give GradientTimesActivation() or another "
                               "single estimator.")
        #: the layers the last call of :meth:`attribute` chose
        self.chosen: list[int] = []

    def params(self) -> dict[str, Any]:
        return {**self.ig.params(), "screen": self.k, "screen_estimator": self.screen.params()["estimator"]}

    def attribute(self, lm, prompts, answer=None, *, layers=None, on_prompt=None):
        queries = encode_prompts(lm, prompts, answer)
        screened = self.screen.attribute(lm, queries, answer, layers=layers)
        self.chosen = screen_layers(screened, min(self.k, len(layers) if layers is not None else lm.n_layers))
        if layers is not None:
            allowed = set(layers)
            self.chosen = [layer for layer in self.chosen if layer in allowed]
        return self.ig.attribute(lm, queries, answer, layers=self.chosen, on_prompt=on_prompt)


#: the estimators a name selects (``--estimator NAME``)
ESTIMATORS: dict[str, type[Estimator]] = {
    IntegratedGradients.name: IntegratedGradients,
    GradientTimesActivation.name: GradientTimesActivation,
}


def register_estimator(cls: type[Estimator]) -> type[Estimator]:
    """Make ``cls`` selectable by its ``name`` (``estimator_named``, ``--estimator``); returns it."""
    ESTIMATORS[cls.name] = cls
    return cls


def estimator_names() -> list[str]:
    return list(ESTIMATORS)


def estimator_named(name: str, **params: Any) -> Estimator:
    """The estimator called ``name`` ("ig", "gxa", "lpi"), made with the ``params`` it takes (others ignored).

    Example:
        >>> estimator_named("ig", steps=20, alphas="gauss")   # IntegratedGradients(steps=20, alphas='gauss', ...)
    """
    cls = ESTIMATORS.get(name)
    if cls is None:
        raise KneuronError(f"Unknown estimator {name!r}: use {', '.join(map(repr, ESTIMATORS))}.")
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{key: value for key, value in params.items() if key in accepted and value is not None})


def estimator_from_params(params: Mapping[str, Any]) -> Estimator:
    """The estimator an atlas's (or a result's) params record; integrated gradients when they name none (atlases
    made before estimators existed). A screened run records ``screen`` (K) and ``screen_estimator``."""
    name = params.get("estimator", IntegratedGradients.name)
    if name == ScreenedIntegratedGradients.name or params.get("screen"):
        ig = estimator_named(IntegratedGradients.name, **dict(params))
        screen = estimator_named(params.get("screen_estimator", GradientTimesActivation.name), **dict(params))
        assert isinstance(ig, IntegratedGradients)
        return ScreenedIntegratedGradients(int(params["screen"]), ig=ig, screen=screen)
    return estimator_named(name, **dict(params))


__all__ = ["ALPHA_RULES", "ESTIMATORS", "Estimator", "GradientTimesActivation", "IntegratedGradients",
           "ScreenedIntegratedGradients", "encode_prompts", "estimator_from_params", "estimator_named",
           "estimator_names", "register_estimator", "screen_layers"]


# registered here, after everything it imports from this module exists (it subclasses Estimator)
from kneuron.attribution.log_prob_increase import LogProbIncrease  # noqa: E402

register_estimator(LogProbIncrease)
__all__ += ["LogProbIncrease"]
