"""Integrated gradients over FFN neurons, exact and fast.

The paper's attribution of neuron i of layer l for a prompt x with answer y*:

    Attr(w_i) = w̄_i · ∫₀¹ ∂P(y* | layer l's activations at the answer position set to α·w̄)/∂w_i dα

approximated by a Riemann sum over ``steps`` points (m = 20), one layer scaled at a time.
``alphas="right"`` uses α = k/m for k = 1..m (the paper's sum); ``"midpoint"`` uses (k − ½)/m;
``"linspace"`` uses m points from 0 to 1 inclusive (EleutherAI's re-implementation); ``"gauss"`` is
m-point Gauss–Legendre quadrature of the same integral on [0, 1] (nodes and weights from
``numpy.polynomial.legendre.leggauss``): exact for polynomials of degree 2m − 1 in α, so 4 to 6 points
come near a 200-step sum where the integrand is smooth. It takes at most ``limits.MAX_GAUSS_POINTS`` (1,000)
points: its nodes come from an m×m eigenproblem, 7.2 GB at 30,000 points, and few points are its purpose.

Every count is refused by arithmetic on the arguments before anything proportional to it is made: an estimator
refuses, when it is made, steps whose smallest run (one layer, one prompt) could not fit its memory budget, and
a call refuses a run whose (prompt, layer, α) rows could not (:mod:`kneuron.attribution.limits`).

What makes it fast without changing the result (the machinery is in
:mod:`kneuron.attribution.step_rows`, on the partial forward passes of
:mod:`kneuron.models.partial_forward`):

* **Batching.** The (layer, α) pairs are rows of one batch; as many rows run together as the
  memory budget allows, and every row's gradient comes from one backward pass. Several prompts
  share batches when they have the same shape (tokens, cached prefix and answer length):
  :meth:`IntegratedGradients.attribute`.
* **Prefix reuse.** Scaling layer l changes nothing below l, so no row runs a block below its
  own layer: a row joins the batch at its layer's block, with that block's clean input, and the
  blocks below the batch's lowest layer are not run at all. The lowest layer's block runs once,
  on the clean row, and its rows branch off at the FFN output projection (its attention and
  up-projection are the same for every α).
* **Causal models.** Scaling the answer position changes nothing at earlier positions, so the
  prompt before it is encoded once into a key/value cache, and the steps run only the answer
  position and the answer tokens after it.
* **Logits where they are needed.** The output head computes only the answer positions.

Shared layers (ALBERT runs one layer's weights at every depth; a neuron is (depth, index)): a block's hooks and
forward are every depth's, so the rows join at their own *depth* through one depth-aware forward of the shared
block (:mod:`kneuron.attribution.shared_depths`), with the same prefix reuse and batching, but neither the
single-prompt branching at the FFN nor the narrowed last FFN.

A naive reference (one full forward and backward per step) lives in the test-suite, which
checks that this implementation matches it within 1e-6 relative in float64.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from kneuron.attribution import limits
from kneuron.attribution.estimator_base import Estimator, OnPrompt, PromptLike, encode_prompts, register_estimator
from kneuron.attribution.ffn_norm import NormRule, check_norm, effective_norm
from kneuron.attribution.limits import attributed_layers, check_row_fits, check_run_fits, count
from kneuron.attribution.objective import Objective, check_objective, objective_of
from kneuron.attribution.shared_depths import check_shared_layers_supported, run_shared_rows
from kneuron.attribution.step_rows import Plan, Row, batches, make_plan, memory_per_row, run_rows, shape_key
from kneuron.attribution.types import NeuronScores
from kneuron.errors import InputError
from kneuron.facts.encoding import EncodedQuery, answer_text
from kneuron.models.language_model import LanguageModel
from kneuron.models.partial_forward import frozen_parameters

__all__ = ["ALPHA_RULES", "AlphaRule", "IntegratedGradients", "Objective", "alpha_points", "batch_memory",
           "integrated_gradients",
           "integrated_gradients_many", "objective_of"]

AlphaRule = Literal["right", "midpoint", "linspace", "gauss"]
#: the alpha rules, in the order help texts list them
ALPHA_RULES = ("right", "midpoint", "linspace", "gauss")

#: on CUDA without a given budget, this share of the device's free memory (the rest is headroom for the
#: allocator's fragmentation, the plans' cached prefixes and memory_per_row's estimate being an estimate)
CUDA_MEMORY_SHARE = 0.6
#: at most this many (prompt, layer, α) rows per batch; below it the memory budget decides. Rows join a
#: batch at their own layer, so a large batch wastes no block, and on a CPU larger matrix products and
#: fewer operator calls make it faster (measured on bert-, gpt2- and SmolLM2-shaped models: one batch of
#: all 240 or 600 rows of a prompt beats batches of 64 to 128 by 5 to 15%)
MAX_ROWS = 1024


def default_memory_budget(lm: LanguageModel) -> int:
    """Bytes one batch of steps may use when the caller gives no budget.

    KNEURON_MEMORY_BUDGET (bytes) when set; on CUDA, :data:`CUDA_MEMORY_SHARE` of the device's free memory
    (``torch.cuda.mem_get_info``) at the call; elsewhere ``limits.DEFAULT_MEMORY_BUDGET`` (2 GiB, measured on CPU).

    On CUDA the budget therefore follows what is free when attribution starts: the model's weights and whatever
    else this or another process holds are already gone from it. Each batch then takes
    ``budget // memory_per_row`` rows (:func:`rows_per_batch`, at most :data:`MAX_ROWS`): with 50 GiB free, the
    budget is 30 GiB, and rows estimated at 40 MiB each go 768 to a batch. The other 40% is headroom for the
    allocator's fragmentation, the prompts' clean passes (their key/value caches) and the estimate being an
    estimate; a batch that still does not fit raises :class:`~kneuron.errors.OutOfMemory` (one line naming the
    settings to lower). Tested on the CPU with the free-memory query replaced; not yet run on a GPU.
    """
    if os.environ.get(limits.BUDGET_VARIABLE) is not None:
        return limits.memory_budget(None)
    device = torch.device(lm.device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return max(1, int(free * CUDA_MEMORY_SHARE))
    return limits.DEFAULT_MEMORY_BUDGET


def check_alphas(steps: object, rule: object) -> int:
    """``steps`` as a whole number ≥ 1 once it and the alpha ``rule`` are known to be usable together: the rule is
    one of :data:`ALPHA_RULES` and Gauss–Legendre has at most ``limits.MAX_GAUSS_POINTS`` points. Arithmetic on the
    arguments only: nothing of size ``steps`` is made."""
    steps = count("steps", steps)
    if rule not in ALPHA_RULES:
        raise InputError(f"Unknown alpha rule {rule!r}: use 'right', 'midpoint', 'linspace' or 'gauss'.")
    if rule == "gauss":
        limits.check_gauss_points(steps)
    return steps


def alpha_points(steps: int, rule: AlphaRule = "right") -> torch.Tensor:
    """The α at which gradients are taken, in float64 (``steps`` a whole number ≥ 1: a float would put α above 1;
    Gauss–Legendre takes at most ``limits.MAX_GAUSS_POINTS``)."""
    steps = check_alphas(steps, rule)
    k = torch.arange(1, steps + 1, dtype=torch.float64)
    if rule == "right":
        return k / steps
    if rule == "midpoint":
        return (k - 0.5) / steps
    if rule == "linspace":
        return torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    if rule == "gauss":
        return _gauss_legendre(steps)[0]
    raise AssertionError(rule)  # check_alphas knows every rule


def alpha_weights(steps: int, rule: AlphaRule = "right") -> torch.Tensor | None:
    """The quadrature weight of each α point (float64, summing to 1), or None for the equal weights 1/m of the
    Riemann rules (whose sums are divided by m once, at the end, as before the weighted rule existed)."""
    steps = check_alphas(steps, rule)
    return _gauss_legendre(steps)[1] if rule == "gauss" else None


def _gauss_legendre(points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss–Legendre nodes and weights moved from [-1, 1] to [0, 1] (the weights then sum to 1)."""
    import numpy as np

    nodes, weights = np.polynomial.legendre.leggauss(points)
    return (torch.from_numpy((nodes + 1.0) / 2.0).to(torch.float64),
            torch.from_numpy(weights / 2.0).to(torch.float64))


def integrated_gradients(
    lm: LanguageModel,
    prompt: PromptLike,
    answer: str | None = None,
    *,
    steps: int = 20,
    objective: Objective = "prob",
    alphas: AlphaRule = "right",
    layers: Sequence[int] | None = None,
    memory_budget: int | str | None = None,
    batch_rows: int | None = None,
    norm: NormRule | None = None,
) -> NeuronScores:
    """Integrated-gradients attribution of every FFN neuron for ``answer`` after ``prompt``.

    Args:
        lm: the model.
        prompt: a Prompt, a template with [Y], plain text a causal model continues, or an
            EncodedQuery (then ``answer`` is not needed).
        answer: the correct answer (several tokens allowed: the objective is their joint,
            teacher-forced probability; the attributed position predicts the first token).
        steps: Riemann steps m (20 in the paper).
        objective: "prob" (the paper) or "logprob" (log of the joint probability).
        alphas: "right" (k/m, the paper), "midpoint" ((k-½)/m), "linspace" (EleutherAI) or "gauss" (``steps``-point
            Gauss–Legendre quadrature, at most ``limits.MAX_GAUSS_POINTS`` points).
        layers: only these layers (others score 0); all by default.
        memory_budget: memory one batch of steps may use: bytes, or a size such as "4GiB" or "512MB" (default
            :func:`default_memory_budget`: KNEURON_MEMORY_BUDGET, else on CUDA a share of the free memory, else
            2 GiB). A run whose rows alone would not fit, or one of whose rows would not, is refused before
            anything is allocated.
        batch_rows: at most this many (layer, α) rows per batch (a whole number ≥ 1; the budget may lower it).
        norm: for a model that normalises each FFN output before the residual (Gemma 2/3, OLMo 2): "frozen" (the
            default) holds the scaled layer's norm factor at its clean value, "live" keeps the literal definition
            (see :mod:`kneuron.attribution.ffn_norm`); other models have nothing to freeze.

    Returns:
        NeuronScores with the (layers, neurons) scores, the clean activations, the clean
        probability, each layer's zero-baseline probability and completeness gap.

    Example:
        >>> scores = integrated_gradients(lm, "The capital of France is", "Paris")
        >>> scores.top(3)      # [L27.N1011, ...]
    """
    return _integrated_gradients_many(lm, [prompt], answer, steps=steps, objective=objective, alphas=alphas,
                                      layers=layers, memory_budget=memory_budget, batch_rows=batch_rows,
                                      norm=norm)[0]


def integrated_gradients_many(lm: LanguageModel, prompts: Sequence[PromptLike], answer: str | None = None,
                              **settings: Any) -> list[NeuronScores]:
    """Deprecated: ``IntegratedGradients(steps=..., ...).attribute(lm, prompts, answer, layers=, on_prompt=)``
    gives the same scores (the estimator is the one way to choose an attribution). Emits a FutureWarning."""
    warnings.warn("integrated_gradients_many(lm, prompts, answer, steps=...) is deprecated: use "
                  "IntegratedGradients(steps=...).attribute(lm, prompts, answer)", FutureWarning, stacklevel=2)
    return _integrated_gradients_many(lm, prompts, answer, **settings)


def _integrated_gradients_many(
    lm: LanguageModel,
    prompts: Sequence[PromptLike],
    answer: str | None = None,
    *,
    steps: int = 20,
    objective: Objective = "prob",
    alphas: AlphaRule = "right",
    layers: Sequence[int] | None = None,
    memory_budget: int | str | None = None,
    batch_rows: int | None = None,
    on_prompt: OnPrompt | None = None,
    norm: NormRule | None = None,
) -> list[NeuronScores]:
    """:func:`integrated_gradients` of several prompts, whose rows share batches where they can (what
    :meth:`IntegratedGradients.attribute` runs).

    Prompts of the same shape (tokens the rows read, cached prefix, answer tokens) are attributed
    together: their (prompt, layer, α) rows fill batches up to the memory budget (``batch_rows`` and
    ``memory_budget`` count all of a batch's rows). Each prompt's scores are those
    :func:`integrated_gradients` gives it alone (up to float rounding: a batch's composition changes
    the order of the sums in its matrix products). ``on_prompt(i, scores)`` reports each prompt as its
    group ends; the result is in the order of ``prompts``.

    Example:
        >>> bag = IntegratedGradients(steps=20).attribute(lm, ["The capital of France is", "France's capital is"],
        ...                                               "Paris")
    """
    steps = check_alphas(steps, alphas)
    rule = effective_norm(lm, norm)
    batch_rows = None if batch_rows is None else count("batch_rows", batch_rows)
    budget = limits.memory_budget(memory_budget) if memory_budget is not None else default_memory_budget(lm)
    limits.check_steps_fit(steps, budget)  # before the prompts are encoded
    queries = encode_prompts(lm, prompts, answer)
    chosen = checked_layers(lm, layers, steps, len(queries), budget)
    points = alpha_points(steps, alphas)
    weights = alpha_weights(steps, alphas)
    with limits.out_of_memory_as_error(lm.device, f"running the clean passes of {len(queries)} prompt(s)"):
        plans, groups = shape_groups(lm, queries, objective)
    results: list[NeuronScores | None] = [None] * len(plans)
    with frozen_parameters(lm.model):
        for members in groups:
            rows = rows_per_batch(lm, plans[members[0]], budget, batch_rows)
            with batch_memory(lm, plans[members[0]], len(members), rows, budget):
                gradient_sums, baselines = _integrate(lm, plans, members, chosen, points, weights, rows,
                                                     objective, rule == "frozen")
            for index in members:
                said = answer_text(lm, queries[index], answer)
                results[index] = _scores(plans[index], queries[index], said, gradient_sums[index],
                                         baselines[index], steps, objective, alphas, rule)
                if on_prompt is not None:
                    on_prompt(index, results[index])
    return [r for r in results if r is not None]


def checked_layers(lm: LanguageModel, layers: Sequence[int] | None, steps: int, prompts: int, budget: float,
                   ) -> list[int]:
    """The layers to attribute (all by default), ascending, once each is known to exist, the run's rows are known to
    fit ``budget`` and the model's layer sharing is supported: what is refused before any forward pass."""
    chosen = attributed_layers(lm, layers)
    check_run_fits(steps, len(chosen), prompts, budget)
    check_shared_layers_supported(lm)
    return chosen


def shape_groups(lm: LanguageModel, queries: Sequence[EncodedQuery], objective: Objective,
                 ) -> tuple[list[Plan], list[list[int]]]:
    """Each query's :class:`Plan` (its clean pass), and the indices of the plans of one :func:`shape_key`, whose
    rows can share batches, in order of first appearance."""
    plans = [make_plan(lm, query, objective) for query in queries]
    groups: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for index, plan in enumerate(plans):
        groups[shape_key(plan)].append(index)
    return plans, list(groups.values())


def rows_per_batch(lm: LanguageModel, plan: Plan, budget: float, batch_rows: int | None) -> int:
    """How many rows of ``plan``'s shape one batch takes: as many as fit ``budget`` (one row that does not fit is
    refused), at most ``batch_rows`` and :data:`MAX_ROWS`."""
    per_row = memory_per_row(lm, plan)
    check_row_fits(per_row, budget)
    return min(batch_rows or MAX_ROWS, max(1, int(budget // max(per_row, 1.0))))


def batch_memory(lm: LanguageModel, plan: Plan, prompts: int, rows: int, budget: float,
                 method: str = "integrated gradients") -> contextlib.AbstractContextManager[None]:
    """The out-of-memory guard of one shape group's batches (``prompts`` prompts of ``plan``'s shape, ``rows`` rows
    a batch): an allocation failure inside becomes one :class:`~kneuron.errors.OutOfMemory` line with the
    batch's estimate against ``budget`` (:func:`kneuron.attribution.limits.out_of_memory_as_error`)."""
    tried = f"attributing {prompts} prompt(s) of {len(plan.input_ids)} tokens by {method} in batches of {rows} rows"
    return limits.out_of_memory_as_error(lm.device, tried, needs=rows * memory_per_row(lm, plan), budget=budget)


def _integrate(lm: LanguageModel, plans: Sequence[Plan], members: list[int], chosen: list[int],
               points: torch.Tensor, weights: torch.Tensor | None, rows: int, objective: Objective,
               frozen_norm: bool = False) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Sum each member prompt's gradients over the α points (each times its weight, when the rule has weights),
    and find each layer's zero baseline."""
    weight_of = {} if weights is None else dict(zip(points.tolist(), weights.tolist(), strict=True))
    run = run_shared_rows if lm.shared_layers else run_rows  # one block at every depth (ALBERT): rows join by depth
    norm_option = {"frozen_norm": True} if frozen_norm else {}  # (no shared-layer family has a post-FFN norm)
    sums = {p: torch.zeros_like(plans[p].activations, dtype=torch.float64) for p in members}
    baselines = {p: torch.full((lm.n_layers,), math.nan, dtype=torch.float64) for p in members}
    step_rows = {layer: [(p, layer, float(a), True) for p in members for a in points.tolist()] for layer in chosen}
    for chunk in batches(step_rows, rows):
        grads, values = run(lm, plans, chunk, objective, **norm_option)
        for (p, layer, alpha, _), grad, value in zip(chunk, grads, values, strict=True):
            sums[p][layer] += grad.double() if weights is None else grad.double() * weight_of[alpha]
            if alpha == 0.0:  # linspace's first point is the zero baseline itself
                baselines[p][layer] = value
    fill_zero_baselines(lm, plans, {p: chosen for p in members}, baselines, rows, objective, frozen_norm)
    return sums, baselines


def fill_zero_baselines(lm: LanguageModel, plans: Sequence[Plan], layers_of: Mapping[int, Sequence[int]],
                        baselines: Mapping[int, torch.Tensor], rows: int, objective: Objective,
                        frozen_norm: bool = False) -> None:
    """Fill, in place, each prompt's zero baseline P(α=0) of the completeness gap in each of its layers
    (``layers_of[p]``) where no step gave it (still NaN): a forward pass per (prompt, layer), no gradient."""
    run = run_shared_rows if lm.shared_layers else run_rows
    norm_option = {"frozen_norm": True} if frozen_norm else {}
    missing: dict[int, list[Row]] = defaultdict(list)
    for p, layers in layers_of.items():
        for layer in layers:
            if math.isnan(baselines[p][layer]):
                missing[layer].append((p, layer, 0.0, False))
    for chunk in batches(missing, rows):
        _, values = run(lm, plans, chunk, objective, gradients=False, **norm_option)
        for (p, layer, _, _), value in zip(chunk, values, strict=True):
            baselines[p][layer] = value


def _scores(plan: Plan, query: EncodedQuery, answer: str | None, gradient_sum: torch.Tensor,
            baseline: torch.Tensor, steps: int, objective: Objective, alphas: AlphaRule,
            norm: NormRule | None = None) -> NeuronScores:
    scores = plan.activations.double() * (gradient_sum if alphas == "gauss" else gradient_sum / steps)
    gap = scores.sum(-1) - (plan.probability - baseline)
    return NeuronScores(
        scores=scores,  # float64 always: the scores of an answer with P below 1e-45 underflow float32
        activations=plan.activations,
        probability=plan.probability,
        baseline=baseline,
        completeness_gap=gap,
        prompt=query.text,
        answer=answer or "",
        position=query.position,
        steps=steps,
        objective=objective,
        alphas=alphas,
        log_probability=plan.log_probability,
        answer_ranks=plan.answer_ranks,
        vocab_size=plan.vocab_size,
        norm=norm,
    )


@register_estimator
class IntegratedGradients(Estimator):
    """The paper's attribution, exact (see :func:`kneuron.attribution.integrated_gradients`).

    Args:
        steps: points of the sum (20 in the paper).
        alphas: "right" (the paper's k/m), "midpoint", "linspace" or "gauss" (``steps``-point Gauss–Legendre, at
            most ``limits.MAX_GAUSS_POINTS``).
        objective: "prob" (the paper) or "logprob".
        memory_budget: how the steps are batched: the bytes a batch may take (no score changes beyond float
            rounding).
        batch_rows: the same, as a number of step rows per batch.
        norm: "frozen" or "live" for models that normalise each FFN output (Gemma 2/3, OLMo 2; see
            :mod:`kneuron.attribution.ffn_norm`); None is the family's default ("frozen" there, nothing elsewhere).
            Recorded in :meth:`params` only when given; a run records the rule it used on its model.

    Example:
        >>> bag = IntegratedGradients(steps=20).attribute(lm, ["The capital of France is"], "Paris")
    """

    name = "ig"
    has_completeness = True

    def __init__(self, steps: int = 20, alphas: AlphaRule = "right", objective: Objective = "prob", *,
                 memory_budget: int | str | None = None, batch_rows: int | None = None,
                 norm: NormRule | None = None) -> None:
        self.steps = check_alphas(steps, alphas)
        # refused here, by arithmetic, when even one layer of one prompt could not fit: the host budget (given,
        # $KNEURON_MEMORY_BUDGET or 2 GiB), since the rows' bookkeeping lives in host memory on any device
        limits.check_steps_fit(self.steps, limits.host_budget(memory_budget))
        self.alphas = alphas
        self.objective = check_objective(objective)
        self.memory_budget = memory_budget
        self.batch_rows = None if batch_rows is None else count("batch_rows", batch_rows)
        self.norm = check_norm(norm)

    def params(self) -> dict[str, Any]:
        return {"estimator": self.name, "steps": self.steps, "alphas": self.alphas, "objective": self.objective,
                **({} if self.norm is None else {"norm": self.norm})}

    def attribute(self, lm: LanguageModel, prompts: PromptLike | Sequence[PromptLike], answer: str | None = None,
                  *, layers: Sequence[int] | None = None, on_prompt: OnPrompt | None = None,
                  ) -> list[NeuronScores]:
        return _integrated_gradients_many(
            lm, encode_prompts(lm, prompts, answer), answer, steps=self.steps, objective=self.objective,
            alphas=self.alphas, layers=layers, memory_budget=self.memory_budget, batch_rows=self.batch_rows,
            on_prompt=on_prompt, norm=self.norm)
