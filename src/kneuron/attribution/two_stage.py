"""Two-stage integrated gradients: screen every layer with a few of the Riemann points, then finish the sum exactly
in the layers whose screened scores could reach the coarse threshold (opt-in, ``--estimator two-stage-ig``).

Integrated gradients scales one layer at a time, so each (prompt, layer) costs ``steps`` gradient rows, and a
model of L layers pays ``L × steps`` rows per prompt. Most layers hold no neuron near the coarse threshold
(0.2 of the prompt's top score). This estimator:

1. **Screens** every layer with ``screen_points`` of the ``steps`` points, evenly spaced and ending at the last
   (for 20 right-Riemann steps and 2 screen points: α = 0.5 and 1). Their mean gradient times the activation
   estimates each neuron's score (with one point, α = 1, it is gradient × activation).
2. **Finishes** the sum, with the other ``steps − screen_points`` points, in each layer whose highest screened
   score reaches ``margin`` × the coarse threshold (``threshold`` × the prompt's top score). The screen's
   gradients are part of that sum, so its work is not lost, and a finished layer's scores are exactly those of
   :class:`~kneuron.attribution.integrated_gradients.IntegratedGradients` (up to the order of a float sum).
3. **Checks**: the threshold is then set again from the finished layers' exact top score; a layer still
   unfinished whose screened top reaches ``margin`` × that threshold is finished too, until none is (adaptive:
   no fixed number of layers).

Layers left unfinished score 0 (their completeness gap is NaN), as a screened run's other layers do. Each
:class:`~kneuron.attribution.types.NeuronScores` records the layers it finished (``screen_layers``), per prompt.
The refined neurons equal exact IG's when the screen does not underestimate a layer's top score by more than a
factor ``1 / margin``: ``benchmarks/bench_estimators.py`` measures how often that holds (the share of facts with
the same refined neurons) and what it costs, per setting.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from kneuron.attribution import limits
from kneuron.attribution.estimator_base import Estimator, OnPrompt, PromptLike, encode_prompts, register_estimator
from kneuron.attribution.ffn_norm import NormRule, check_norm, effective_norm
from kneuron.attribution.integrated_gradients import (
    AlphaRule,
    _scores,
    alpha_points,
    batch_memory,
    check_alphas,
    checked_layers,
    default_memory_budget,
    fill_zero_baselines,
    rows_per_batch,
    shape_groups,
)
from kneuron.attribution.limits import count
from kneuron.attribution.objective import Objective, check_objective
from kneuron.attribution.shared_depths import run_shared_rows
from kneuron.attribution.step_rows import Plan, Row, batches, run_rows
from kneuron.attribution.types import NeuronScores
from kneuron.errors import InputError
from kneuron.models.language_model import LanguageModel
from kneuron.models.partial_forward import frozen_parameters

#: the coarse threshold the screen aims at (the paper's 0.2 of a prompt's top score)
DEFAULT_THRESHOLD = 0.2


def screen_indices(steps: int, points: int) -> list[int]:
    """Which of the ``steps`` α points the screen takes: ``points`` of them, evenly spaced, the last one included
    (20 steps, 2 points: the 10th and 20th, α = 0.5 and 1 for the right rule)."""
    steps, points = count("steps", steps), count("screen_points", points)
    if points > steps:
        raise InputError(f"screen_points={points} is more than steps={steps}: give at most {steps}.")
    return sorted({round((j + 1) * steps / points) - 1 for j in range(points)})


def _finish_layers(screen_tops: torch.Tensor, exact_top: float, screened_top: float, done: set[int],
                   candidates: Sequence[int], threshold: float, margin: float) -> list[int]:
    """The layers still to finish: those whose screened top reaches ``margin × threshold × top``, where ``top`` is
    the exact top score of the finished layers once there are any, else the screen's own top."""
    top = exact_top if done else screened_top
    bar = margin * threshold * top
    return [layer for layer in candidates if layer not in done and float(screen_tops[layer]) >= bar]


def _two_stage(lm: LanguageModel, plans: Sequence[Plan], members: list[int], chosen: list[int],
               points: torch.Tensor, screen: list[int], rows: int, objective: Objective, frozen_norm: bool,
               threshold: float, margin: float) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor],
                                                         dict[int, tuple[int, ...]]]:
    """Per member prompt: the gradient sums (over all points in finished layers, zero elsewhere), the zero
    baselines of the finished layers, and which layers were finished."""
    run = run_shared_rows if lm.shared_layers else run_rows
    norm_option = {"frozen_norm": True} if frozen_norm else {}
    alphas = points.tolist()
    screen_alphas = [alphas[i] for i in screen]
    screened = set(screen)
    rest_alphas = [a for i, a in enumerate(alphas) if i not in screened]

    def run_steps(wanted: dict[int, list[Row]], into: dict[int, torch.Tensor],
                  baselines: dict[int, torch.Tensor]) -> None:
        for chunk in batches(wanted, rows):
            grads, values = run(lm, plans, chunk, objective, **norm_option)
            for (p, layer, alpha, _), grad, value in zip(chunk, grads, values, strict=True):
                into[p][layer] += grad.double()
                if alpha == 0.0:  # linspace's first point is the zero baseline itself
                    baselines[p][layer] = value

    partial = {p: torch.zeros_like(plans[p].activations, dtype=torch.float64) for p in members}
    baselines = {p: torch.full((lm.n_layers,), math.nan, dtype=torch.float64) for p in members}
    run_steps({layer: [(p, layer, a, True) for p in members for a in screen_alphas] for layer in chosen},
              partial, baselines)
    # each layer's highest screened score, (layers,) per prompt
    screen_tops = {p: (plans[p].activations.double() * partial[p] / len(screen)).amax(dim=1) for p in members}
    sums = {p: torch.zeros_like(partial[p]) for p in members}
    done: dict[int, set[int]] = {p: set() for p in members}
    exact_top = {p: -math.inf for p in members}
    while True:
        todo = {p: _finish_layers(screen_tops[p], exact_top[p], float(screen_tops[p][chosen].max()), done[p],
                                  chosen, threshold, margin) for p in members}
        if not any(todo.values()):
            break
        wanted: dict[int, list[Row]] = defaultdict(list)
        for p, layers in todo.items():
            for layer in layers:
                wanted[layer].extend((p, layer, a, True) for a in rest_alphas)
                sums[p][layer] = partial[p][layer]
        run_steps(wanted, sums, baselines)
        for p, layers in todo.items():
            done[p].update(layers)
            if layers:
                exact = plans[p].activations.double()[layers] * sums[p][layers] / len(alphas)
                exact_top[p] = max(exact_top[p], float(exact.max()))
    fill_zero_baselines(lm, plans, {p: sorted(done[p]) for p in members}, baselines, rows, objective, frozen_norm)
    return sums, baselines, {p: tuple(sorted(done[p])) for p in members}


@register_estimator
class TwoStageIntegratedGradients(Estimator):
    """Integrated gradients finished only where a screen of a few of its own points says a neuron could be coarse
    (see :mod:`kneuron.attribution.two_stage`).

    Args:
        steps, alphas, objective, memory_budget, batch_rows, norm: as :class:`IntegratedGradients` ("gauss" is
            refused: its points have unequal weights, so a few of them do not estimate the integral).
        screen_points: how many of the ``steps`` points screen every layer (2 by default: α = 0.5 and 1).
        margin: finish a layer whose screened top score reaches ``margin`` × the coarse threshold (0.5 by
            default; smaller finishes more layers, and is safer and slower).
        threshold: the coarse threshold the screen aims at, as a share of a prompt's top score (the paper's 0.2;
            give a run's ``--threshold``).

    Example:
        >>> bag = TwoStageIntegratedGradients(steps=20).attribute(lm, prompts, "Paris")
        >>> bag[0].screen_layers      # the layers finished for the first prompt, e.g. (21, 24, 27, 28, 29)
    """

    name = "two-stage-ig"
    has_completeness = True  # integrated gradients' own, in the finished layers (NaN in the others)
    compared_by_default = False  # IG itself where it finishes: `kneuron study estimators --estimators two-stage-ig`

    def __init__(self, steps: int = 20, alphas: AlphaRule = "right", objective: Objective = "prob", *,
                 screen_points: int = 2, margin: float = 0.5, threshold: float = DEFAULT_THRESHOLD,
                 memory_budget: int | str | None = None, batch_rows: int | None = None,
                 norm: NormRule | None = None) -> None:
        self.steps = check_alphas(steps, alphas)
        limits.check_steps_fit(self.steps, limits.host_budget(memory_budget))  # arithmetic, as IntegratedGradients
        if alphas == "gauss":
            raise InputError("two-stage-ig needs equally weighted points: use alphas 'right', 'midpoint' or "
                             "'linspace' (Gauss-Legendre's points have unequal weights).")
        self.alphas = alphas
        self.objective = check_objective(objective)
        self.screen_points = count("screen_points", screen_points)
        screen_indices(self.steps, self.screen_points)
        for label, value, bound in (("margin", margin, 1.0), ("threshold", threshold, 1.0)):
            if not isinstance(value, (int, float)) or not 0.0 < float(value) <= bound:
                raise InputError(f"{label}={value!r} is out of range: give a number in (0, {bound:g}].")
        self.margin, self.threshold = float(margin), float(threshold)
        self.memory_budget = memory_budget
        self.batch_rows = batch_rows
        self.norm = check_norm(norm)

    def params(self) -> dict[str, Any]:
        return {"estimator": self.name, "steps": self.steps, "alphas": self.alphas, "objective": self.objective,
                "screen_points": self.screen_points, "margin": self.margin, "threshold": self.threshold,
                **({} if self.norm is None else {"norm": self.norm})}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TwoStageIntegratedGradients:
        """Rebuilt from an atlas's params (whose ``threshold`` is the run's coarse threshold, the one it aims at)."""
        return super().from_params(params)  # type: ignore[return-value]

    def attribute(self, lm: LanguageModel, prompts: PromptLike | Sequence[PromptLike], answer: str | None = None,
                  *, layers: Sequence[int] | None = None, on_prompt: OnPrompt | None = None,
                  ) -> list[NeuronScores]:
        queries = encode_prompts(lm, prompts, answer)
        rule = effective_norm(lm, self.norm)
        batch_rows = None if self.batch_rows is None else count("batch_rows", self.batch_rows)
        budget = (limits.memory_budget(self.memory_budget) if self.memory_budget is not None
                  else default_memory_budget(lm))
        chosen = checked_layers(lm, layers, self.steps, len(queries), budget)
        points = alpha_points(self.steps, self.alphas)
        screen = screen_indices(self.steps, self.screen_points)
        with limits.out_of_memory_as_error(lm.device, f"running the clean passes of {len(queries)} prompt(s)"):
            plans, groups = shape_groups(lm, queries, self.objective)
        results: list[NeuronScores | None] = [None] * len(plans)
        with frozen_parameters(lm.model):
            for members in groups:
                rows = rows_per_batch(lm, plans[members[0]], budget, batch_rows)
                with batch_memory(lm, plans[members[0]], len(members), rows, budget, "two-stage integrated gradients"):
                    sums, baselines, finished = _two_stage(lm, plans, members, chosen, points, screen, rows,
                                                           self.objective, rule == "frozen", self.threshold,
                                                           self.margin)
                for index in members:
                    said = answer if answer is not None else lm.tokenizer.decode(list(queries[index].answer_ids))
                    scores = _scores(plans[index], queries[index], said, sums[index], baselines[index],
                                     self.steps, self.objective, self.alphas, rule)
                    scores.screen_layers = finished[index]
                    scores.estimator = self.name
                    results[index] = scores
                    if on_prompt is not None:
                        on_prompt(index, scores)
        return [r for r in results if r is not None]


__all__ = ["TwoStageIntegratedGradients", "screen_indices"]
