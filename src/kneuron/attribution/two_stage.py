"""Two-stage integrated gradients: screen every layer with a few of the Riemann points, then finish the sum exactly
where a neuron could change the fact's refined set (opt-in, ``--estimator two-stage-ig``).

Integrated gradients scales one layer at a time, so each (prompt, layer) costs ``steps`` gradient rows, and a
model of L layers pays ``L × steps`` rows per prompt. A fact's refined neurons depend on far fewer: on each
prompt's top score (it sets the coarse threshold) and on the coarse counts of the neurons near the refinement's
cut. This estimator takes the whole bag of one fact in one call and:

1. **Screens** every layer with ``screen_points`` of the ``steps`` points, at the middle of equal groups (for
   20 right-Riemann steps and 2 screen points: the 5th and 15th, α = 0.25 and 0.75). Their mean gradient times
   the activation estimates each neuron's score. The screen's gradients are part of the exact sum, so its work is
   not lost when a layer is finished.
2. **Measures each layer's zero-ablation effect** P(1) − P(0 at that layer), one forward row per layer. By
   completeness it is the sum of the layer's scores; it finds a layer whose top score the screen underestimates
   (an integrand that peaks at small α, in a low layer), which gradient × activation and a two-point screen miss.
3. **Finds each prompt's top score exactly:** it finishes (all ``steps`` points) the layers whose effect reaches
   ``ablation_margin`` × the screen's top, then, until none is left, every layer whose screened top reaches
   ``top_margin`` × the exact top found so far.
4. **Settles the refined set:** with the coarse bar (``threshold`` × each prompt's exact top), a neuron is
   surely coarse in a prompt where its layer is finished and its score passes the bar, possibly coarse where
   its layer is not finished and its screened score reaches ``margin`` × the bar. Each neuron's coarse count
   thus lies between a low and a high count. The refinement's walk over shares (:func:`share_walk`, the
   adaptive rule or a fixed ``share``) is run on both; a neuron whose two counts fall on either side of the cut
   at a share either walk looks at has its layer finished in the prompts where it is possibly coarse. This
   repeats until no neuron straddles a cut: then both walks choose the same neurons, those of the exact counts.

Layers left unfinished score 0 (their completeness gap is NaN), as a screened run's other layers do; each
:class:`~kneuron.attribution.types.NeuronScores` records the layers it finished (``screen_layers``), per prompt.
So a prompt's coarse neurons may miss some of exact IG's in unfinished layers; the fact's refined neurons are
exact IG's whenever the screen does not hide a coarse neuron (screened score below ``margin`` × the bar) or a
top score (below ``top_margin`` × the top, with an effect below ``ablation_margin`` × the screen's top).
``benchmarks/bench_estimators.py --two-stage`` measures how often that holds on the demo's facts and what it costs.

What it costs is mostly batches, not rows: on a CPU each batch reads the weights of every block it runs, forward and
backward, however few its rows (on SmolLM2, about 0.1 s for a batch that runs all 30 blocks), and a round of this
rule has few rows per prompt. So the bag's prompts run together: their clean passes in one right-padded forward
(:func:`~kneuron.attribution.step_rows.make_plans`), and each round's rows of all prompts in one batch, their
cached prefixes of different lengths padded (:mod:`kneuron.models.padded_context`, on the Llama family; elsewhere
one batch per prefix length, as before). ``benchmarks/profile_two_stage.py`` shows a fact batch by batch.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
)
from kneuron.attribution.limits import count
from kneuron.attribution.objective import Objective, check_objective
from kneuron.attribution.selection import share_walk
from kneuron.attribution.shared_depths import run_shared_rows
from kneuron.attribution.step_rows import Plan, Row, batch_key, batches, make_plans, run_rows
from kneuron.attribution.types import NeuronScores
from kneuron.errors import InputError
from kneuron.facts.encoding import answer_text
from kneuron.models.language_model import LanguageModel
from kneuron.models.partial_forward import frozen_parameters

#: the coarse threshold the screen aims at (the paper's 0.2 of a prompt's top score)
DEFAULT_THRESHOLD = 0.2


def screen_indices(steps: int, points: int) -> list[int]:
    """Which of the ``steps`` α points the screen takes: ``points`` of them, one at the middle of each of equal
    groups (20 steps, 2 points: the 5th and 15th, α = 0.25 and 0.75 for the right rule; 1 point: α = 0.5), a
    midpoint rule over the screen's groups, which weighs small α as much as large."""
    steps, points = count("steps", steps), count("screen_points", points)
    if points > steps:
        raise InputError(f"screen_points={points} is more than steps={steps}: give at most {steps}.")
    return sorted({math.floor((j + 0.5) * steps / points + 0.5) - 1 for j in range(points)})


@dataclass(frozen=True)
class ScreenRule:
    """The settings of steps 3 and 4 of :mod:`kneuron.attribution.two_stage`."""

    threshold: float
    share: float | str
    margin: float
    top_margin: float
    ablation_margin: float


def _straddling(exact: dict[int, torch.Tensor], screened: dict[int, torch.Tensor], done: dict[int, set[int]],
                members: list[int], rule: ScreenRule) -> dict[int, list[int]]:
    """Per prompt, the unfinished layers holding a neuron whose coarse count is not settled (step 4)."""
    bars, sure, maybe = {}, [], []
    for p in members:
        layers = sorted(done[p])
        bars[p] = rule.threshold * max(float(exact[p][layers].max()), 0.0) if layers else math.inf
        finished = torch.zeros(exact[p].shape[0], 1, dtype=torch.bool)
        finished[layers] = True
        sure.append((exact[p] > bars[p]) & finished)
        maybe.append((screened[p] >= rule.margin * bars[p]) & (screened[p] > 0) & ~finished)
    low = torch.stack(sure).sum(0)
    high = low + torch.stack(maybe).sum(0)
    prompts = len(members)

    def kept(counts: torch.Tensor) -> Callable[[float], list]:
        return lambda share: torch.nonzero(counts > share * prompts).tolist()

    shares = set(share_walk(kept(low), rule.share)[2]) | set(share_walk(kept(high), rule.share)[2])
    unsettled = torch.zeros_like(low, dtype=torch.bool)
    for share in shares:
        need = share * prompts
        unsettled |= (low <= need) & (high > need)
    return {p: sorted({int(layer) for layer in torch.nonzero((unsettled & mask).any(dim=1)).flatten().tolist()})
            for p, mask in zip(members, maybe, strict=True)}


def _two_stage(lm: LanguageModel, plans: Sequence[Plan], groups: list[list[int]], rows_of: list[int],
               chosen: list[int], points: torch.Tensor, screen: list[int], objective: Objective, frozen_norm: bool,
               rule: ScreenRule) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor],
                                          dict[int, tuple[int, ...]]]:
    """Per prompt of the bag: the gradient sums (over all points in finished layers, zero elsewhere), the zero
    baselines of the finished layers (NaN elsewhere), and which layers were finished. ``groups`` are the bag's
    prompts by shape (rows of one group share batches, of ``rows_of[g]`` rows at most); the rule counts over all."""
    members = [p for group in groups for p in group]
    run = run_shared_rows if lm.shared_layers else run_rows
    norm_option = {"frozen_norm": True} if frozen_norm else {}
    alphas = points.tolist()
    screen_alphas = [alphas[i] for i in screen]
    screened_points = set(screen)
    rest_alphas = [a for i, a in enumerate(alphas) if i not in screened_points]

    def run_steps(wanted: dict[int, list[Row]], into: dict[int, torch.Tensor]) -> None:
        for group, rows in zip(groups, rows_of, strict=True):
            mine = set(group)
            own = {layer: kept for layer, listed in wanted.items() if (kept := [r for r in listed if r[0] in mine])}
            for chunk in batches(own, rows):
                grads, _ = run(lm, plans, chunk, objective, **norm_option)
                for (p, layer, _, _), grad in zip(chunk, grads, strict=True):
                    into[p][layer] += grad.double()

    activations = {p: plans[p].activations.double() for p in members}
    partial = {p: torch.zeros_like(activations[p]) for p in members}
    run_steps({layer: [(p, layer, a, True) for p in members for a in screen_alphas] for layer in chosen}, partial)
    screened = {p: activations[p] * partial[p] / len(screen) for p in members}
    # step 2: every chosen layer's zero baseline P(0_l), one forward row each
    baselines = {p: torch.full((lm.n_layers,), math.nan, dtype=torch.float64) for p in members}
    for group, rows in zip(groups, rows_of, strict=True):
        fill_zero_baselines(lm, plans, {p: chosen for p in group}, baselines, rows, objective, frozen_norm)
    sums = {p: torch.zeros_like(partial[p]) for p in members}
    exact = {p: torch.zeros_like(partial[p]) for p in members}
    done: dict[int, set[int]] = {p: set() for p in members}

    def finish(todo: dict[int, list[int]]) -> None:
        wanted: dict[int, list[Row]] = defaultdict(list)
        for p, layers in todo.items():
            for layer in layers:
                wanted[layer].extend((p, layer, a, True) for a in rest_alphas)
                sums[p][layer] = partial[p][layer]
        run_steps(wanted, sums)
        for p, layers in todo.items():
            done[p].update(layers)
            exact[p][layers] = activations[p][layers] * sums[p][layers] / len(alphas)

    # step 3: each prompt's top score
    screen_tops = {p: screened[p].amax(dim=1) for p in members}
    finish({p: [layer for layer in chosen if float(plans[p].probability - baselines[p][layer])
                >= rule.ablation_margin * max(float(screen_tops[p][chosen].max()), 0.0)] for p in members})
    while True:
        todo = {}
        for p in members:
            top = float(exact[p][sorted(done[p])].max()) if done[p] else float(screen_tops[p][chosen].max())
            todo[p] = [layer for layer in chosen
                       if layer not in done[p] and float(screen_tops[p][layer]) >= rule.top_margin * top]
        if not any(todo.values()):
            break
        finish(todo)
    # step 4: the refined set's cut
    while any((todo := _straddling(exact, screened, done, members, rule)).values()):
        finish(todo)
    for p in members:
        unfinished = [layer for layer in range(lm.n_layers) if layer not in done[p]]
        baselines[p][unfinished] = math.nan
    return sums, baselines, {p: tuple(sorted(done[p])) for p in members}


@register_estimator
class TwoStageIntegratedGradients(Estimator):
    """Integrated gradients finished only where a screen of a few of its own points says a neuron could change the
    fact's refined set (see :mod:`kneuron.attribution.two_stage`). Give it one fact's bag per call.

    Args:
        steps, alphas, objective, memory_budget, batch_rows, norm: as :class:`IntegratedGradients` ("gauss" is
            refused: its points have unequal weights, so a few of them do not estimate the integral).
        screen_points: how many of the ``steps`` points screen every layer (2 by default: α = 0.25 and 0.75).
        margin: a neuron of an unfinished layer may be coarse where its screened score reaches ``margin`` × the
            coarse bar (0.7 by default; smaller finishes more, and is safer and slower).
        top_margin: finish a layer whose screened top reaches ``top_margin`` × the prompt's exact top so far
            (0.8 by default).
        ablation_margin: finish a layer whose zero-ablation effect reaches ``ablation_margin`` × the screen's top
            score (1.0 by default).
        threshold, share: the refinement it aims at: the coarse threshold as a share of a prompt's top score
            (the paper's 0.2) and the refinement's share (``"adaptive"`` or a fraction); give a run's
            ``--threshold`` and ``--share``.

    Example:
        >>> bag = TwoStageIntegratedGradients(steps=20).attribute(lm, prompts, "Paris")
        >>> bag[0].screen_layers      # the layers finished for the first prompt, e.g. (21, 24, 27, 28, 29)
    """

    name = "two-stage-ig"
    has_completeness = True  # integrated gradients' own, in the finished layers (NaN in the others)
    compared_by_default = False  # IG itself where it finishes: `kneuron study estimators --estimators two-stage-ig`
    per_bag = True  # its rule reads the fact's whole bag: a run gives it one fact per call

    def __init__(self, steps: int = 20, alphas: AlphaRule = "right", objective: Objective = "prob", *,
                 screen_points: int = 2, margin: float = 0.7, top_margin: float = 0.8, ablation_margin: float = 1.0,
                 threshold: float = DEFAULT_THRESHOLD, share: float | str = "adaptive",
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
        for label, value, bound in (("margin", margin, 1.0), ("top_margin", top_margin, 1.0),
                                    ("ablation_margin", ablation_margin, 1e6), ("threshold", threshold, 1.0)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < float(value) <= bound:
                raise InputError(f"{label}={value!r} is out of range: give a number in (0, {bound:g}].")
        self.margin, self.top_margin, self.threshold = float(margin), float(top_margin), float(threshold)
        self.ablation_margin = float(ablation_margin)
        if share != "adaptive" and (not isinstance(share, (int, float)) or isinstance(share, bool)
                                    or not 0.0 <= float(share) < 1.0):
            raise InputError(f"share={share!r} is out of range: give 'adaptive' or a fraction in [0, 1).")
        self.share = share if share == "adaptive" else float(share)
        self.memory_budget = memory_budget
        self.batch_rows = batch_rows
        self.norm = check_norm(norm)

    def params(self) -> dict[str, Any]:
        return {"estimator": self.name, "steps": self.steps, "alphas": self.alphas, "objective": self.objective,
                "screen_points": self.screen_points, "margin": self.margin, "top_margin": self.top_margin,
                "ablation_margin": self.ablation_margin, "threshold": self.threshold, "share": self.share,
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
        # the bag's clean passes in one batch, and its prompts' rows sharing batches across prefix lengths, where
        # the model allows it (make_plans, padded_context): one batch of a round instead of one per prompt, each of
        # which reads every weight of the blocks it runs. A bag is one fact's prompts, so its scores depend on
        # the fact alone, as a run stores them.
        with limits.out_of_memory_as_error(lm.device, f"running the clean passes of {len(queries)} prompt(s)"):
            plans = make_plans(lm, queries, self.objective)
        grouped: dict[tuple[int, int, int], list[int]] = defaultdict(list)
        for index, plan in enumerate(plans):
            grouped[batch_key(lm, plan)].append(index)
        groups = list(grouped.values())
        screen_rule = ScreenRule(self.threshold, self.share, self.margin, self.top_margin, self.ablation_margin)
        results: list[NeuronScores | None] = [None] * len(plans)
        rows_of = [rows_per_batch(lm, plans[max(members, key=lambda p: plans[p].context)], budget, batch_rows)
                   for members in groups]
        with frozen_parameters(lm.model):
            longest = max(range(len(plans)), key=lambda index: (len(plans[index].input_ids), plans[index].context))
            with batch_memory(lm, plans[longest], len(plans), max(rows_of), budget, "two-stage integrated gradients"):
                sums, baselines, finished = _two_stage(lm, plans, groups, rows_of, chosen, points, screen,
                                                       self.objective, rule == "frozen", screen_rule)
            for index in range(len(plans)):
                said = answer_text(lm, queries[index], answer)
                scores = _scores(plans[index], queries[index], said, sums[index], baselines[index],
                                 self.steps, self.objective, self.alphas, rule)
                scores.screen_layers = finished[index]
                scores.estimator = self.name
                results[index] = scores
                if on_prompt is not None:
                    on_prompt(index, scores)
        return [r for r in results if r is not None]


__all__ = ["ScreenRule", "TwoStageIntegratedGradients", "screen_indices"]
