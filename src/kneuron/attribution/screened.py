"""Screened integrated gradients: a cheap estimator picks a bag's K most promising layers, and exact integrated
gradients runs only there (opt-in; see :class:`ScreenedIntegratedGradients` for when to trust it).

The layers chosen are part of the result, not of the estimator: every returned
:class:`~kneuron.attribution.types.NeuronScores` carries them (``screen_layers``), so one estimator object can
serve several bags (or threads) and each result says where it was computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from kneuron.attribution.estimator_base import (
    Estimator,
    OnPrompt,
    PromptLike,
    encode_prompts,
    estimator_named,
    register_estimator,
)
from kneuron.attribution.gradient_times_activation import GradientTimesActivation
from kneuron.attribution.integrated_gradients import IntegratedGradients
from kneuron.attribution.limits import count
from kneuron.attribution.types import NeuronScores
from kneuron.errors import InputError
from kneuron.models.language_model import LanguageModel


def screen_layers(bag: Sequence[NeuronScores], k: int) -> list[int]:
    """The ``k`` layers where a bag's screening scores are largest: each layer ranked by its highest score over
    all prompts of the bag (the score that would set a prompt's coarse threshold), ties by layer; ascending."""
    if not bag:
        raise InputError("The bag of prompts is empty: give at least one prompt's scores.")
    k = count("screen", k)
    top = torch.stack([s.scores.double().amax(dim=1) for s in bag]).amax(dim=0)
    order = sorted(range(len(top)), key=lambda layer: (-float(top[layer]), layer))
    return sorted(order[:k])


@register_estimator
class ScreenedIntegratedGradients(Estimator):
    """Screen, then exact: ``screen`` scores the whole bag, and exact integrated gradients runs only in the
    ``layers`` layers where the screen's scores are largest (:func:`screen_layers`); other layers score 0. Each
    returned NeuronScores records the layers chosen (``screen_layers``, ascending).

    Each layer is scaled alone in integrated gradients, so the scores in the chosen layers are exactly those a
    full run gives there. The refined neurons equal a full run's when every prompt's top score and every coarse
    neuron lie in the chosen layers. They differ when the screen leaves out a layer holding a prompt's maximum
    (the coarse threshold, 0.2 of that maximum, then drops and admits neurons the full run does not) or one
    holding a coarse neuron. Trust it where a benchmark on the same model says the screen agrees
    (``benchmarks/bench_estimators.py`` measures the share of facts with identical refined neurons), and keep the
    exact default when every neuron matters. ``attribute`` treats its prompts as one bag (one fact).

    Example:
        >>> bag = ScreenedIntegratedGradients(2, IntegratedGradients(steps=20)).attribute(lm, prompts, "Paris")
        >>> bag[0].screen_layers      # (3, 5)
    """

    name = "screened-ig"
    has_completeness = True  # integrated gradients' own, in the chosen layers (NaN in the others)
    selectable = False  # it needs K: ``--estimator ig --screen K``, or its params
    per_bag = True  # the K layers are chosen for the whole bag

    def __init__(self, layers: int, ig: IntegratedGradients | None = None, screen: Estimator | None = None) -> None:
        self.k = count("screen", layers)
        self.ig = ig or IntegratedGradients()
        self.screen = screen or GradientTimesActivation(self.ig.objective, norm=self.ig.norm)
        if isinstance(self.screen, ScreenedIntegratedGradients):
            raise InputError("A screen cannot itself be screened: give GradientTimesActivation() or another "
                             "single estimator.")

    def params(self) -> dict[str, Any]:
        return {**self.ig.params(), "screen": self.k, "screen_estimator": self.screen.params()["estimator"]}

    @classmethod
    def claims(cls, params: Mapping[str, Any]) -> bool:
        """A screened run records its integrated gradients' params (``"estimator": "ig"``) with ``"screen"``."""
        return params.get("estimator") == cls.name or bool(params.get("screen"))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ScreenedIntegratedGradients:
        ig = estimator_named(IntegratedGradients.name, **dict(params))
        screen = estimator_named(params.get("screen_estimator", GradientTimesActivation.name), **dict(params))
        assert isinstance(ig, IntegratedGradients)
        return cls(int(params["screen"]), ig=ig, screen=screen)

    def attribute(self, lm: LanguageModel, prompts: PromptLike | Sequence[PromptLike], answer: str | None = None,
                  *, layers: Sequence[int] | None = None, on_prompt: OnPrompt | None = None,
                  ) -> list[NeuronScores]:
        queries = encode_prompts(lm, prompts, answer)
        screened = self.screen.attribute(lm, queries, answer, layers=layers)
        chosen = screen_layers(screened, min(self.k, len(layers) if layers is not None else lm.n_layers))
        if layers is not None:
            allowed = set(layers)
            chosen = [layer for layer in chosen if layer in allowed]
        recorded = tuple(chosen)

        def report(index: int, scores: NeuronScores) -> None:  # each prompt says where it was computed
            scores.screen_layers = recorded
            if on_prompt is not None:
                on_prompt(index, scores)

        bag = self.ig.attribute(lm, queries, answer, layers=chosen, on_prompt=report)
        for scores in bag:
            scores.screen_layers = recorded
        return bag


__all__ = ["ScreenedIntegratedGradients", "screen_layers"]
