"""Integrated gradients over FFN neurons, exact and fast.

The paper's attribution of neuron i of layer l for a prompt x with answer y*:

    Attr(w_i) = w̄_i · ∫₀¹ ∂P(y* | layer l's activations at the answer position set to α·w̄)/∂w_i dα

approximated by a Riemann sum over ``steps`` points (m = 20), one layer scaled at a time.
``alphas="right"`` uses α = k/m for k = 1..m (the paper's sum); ``"midpoint"`` uses (k − ½)/m;
``"linspace"`` uses m points from 0 to 1 inclusive (EleutherAI's re-implementation).

What makes it fast without changing the result:

* **Batching.** The (layer, α) pairs are rows of one batch; as many rows run together as the
  memory budget allows, and every row's gradient comes from one backward pass.
* **Prefix reuse.** Scaling layer l changes nothing below l, so no row runs a block below its
  own layer: a row joins the batch at its layer's block, with that block's clean input, and the
  blocks below the batch's lowest layer are not run at all. The lowest layer's block runs once,
  on the clean row, and its rows branch off at the FFN output projection (its attention and
  up-projection are the same for every α).
* **Causal models.** Scaling the answer position changes nothing at earlier positions, so the
  prompt before it is encoded once into a key/value cache, and the steps run only the answer
  position and the answer tokens after it.
* **Logits where they are needed.** The output head computes only the answer positions.

A naive reference (one full forward and backward per step) lives in the test-suite, which
checks that this implementation matches it within 1e-6 relative in float64.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from kneuron.attribution.types import NeuronScores
from kneuron.errors import KneuronError
from kneuron.facts.encoding import EncodedQuery, at_least_float32, encode
from kneuron.facts.fact import Prompt
from kneuron.models.hooks import on_ffn_input
from kneuron.models.language_model import LanguageModel

Objective = Literal["prob", "logprob"]
AlphaRule = Literal["right", "midpoint", "linspace"]

#: default memory for one batch of steps: 2 GiB, overridable per call or with KNEURON_MEMORY_BUDGET (bytes)
DEFAULT_MEMORY_BUDGET = 2 * 1024**3
#: at most this many (layer, α) rows per batch; below it the memory budget decides. Rows join a batch at
#: their own layer, so a large batch wastes no block, and on a CPU larger matrix products and fewer
#: operator calls make it faster (measured on bert-, gpt2- and SmolLM2-shaped models: one batch of all
#: 240 or 600 rows beats batches of 64 to 128 by 5 to 15%)
MAX_ROWS = 1024


def alpha_points(steps: int, rule: AlphaRule = "right") -> torch.Tensor:
    """The α at which gradients are taken, in float64."""
    if steps < 1:
        raise KneuronError(f"steps must be at least 1; got {steps}.")
    k = torch.arange(1, steps + 1, dtype=torch.float64)
    if rule == "right":
        return k / steps
    if rule == "midpoint":
        return (k - 0.5) / steps
    if rule == "linspace":
        return torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    raise KneuronError(f"Unknown alpha rule {rule!r}: use 'right', 'midpoint' or 'linspace'.")


def objective_of(log_probs: torch.Tensor, objective: Objective) -> torch.Tensor:
    """(rows, answer tokens) log-probabilities → the objective per row."""
    total = log_probs.sum(-1)
    if objective == "prob":
        return total.exp()
    if objective == "logprob":
        return total
    raise KneuronError(f"Unknown objective {objective!r}: use 'prob' or 'logprob'.")


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """No parameter requires a gradient inside the block (saves the weight-gradient work and memory)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def _record_block_inputs(lm: LanguageModel, store: dict[int, torch.Tensor]) -> Iterator[None]:
    """Record each block's input hidden states (detached) into ``store``."""
    handles = []

    def make(layer: int):
        def hook(_module, args, kwargs):
            store[layer] = _hidden_from(args, kwargs).detach()
        return hook

    try:
        for layer in range(lm.n_layers):
            handles.append(lm.block(layer).register_forward_pre_hook(make(layer), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _hidden_from(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    for name in ("hidden_states", "hidden_state", "x"):
        if name in kwargs:
            return kwargs[name]
    raise KneuronError("Could not find the hidden states among a block's inputs; the block signature is unusual.")


@contextmanager
def start_at_layer(lm: LanguageModel, start: int, hidden: torch.Tensor) -> Iterator[None]:
    """Run only blocks ``start``.. : the blocks below pass their input through untouched and
    block ``start`` receives ``hidden`` (its clean input) instead. Restored on exit."""
    if start == 0:
        yield
        return
    skipped = [lm.block(layer) for layer in range(start)]

    def passthrough(*args, **kwargs):
        return _hidden_from(args, kwargs)

    def feed(_module, args, kwargs):
        if args:
            return (hidden, *args[1:]), kwargs
        for name in ("hidden_states", "hidden_state", "x"):
            if name in kwargs:
                return args, {**kwargs, name: hidden}
        return None

    handle = lm.block(start).register_forward_pre_hook(feed, with_kwargs=True)
    try:
        for block in skipped:
            block.forward = passthrough
        yield
    finally:
        handle.remove()
        for block in skipped:
            if "forward" in block.__dict__:
                del block.forward


@contextmanager
def logits_at(lm: LanguageModel, positions: Sequence[int]) -> Iterator[bool]:
    """Make the output head compute logits only at ``positions``; yields whether it could."""
    head = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None
    if head is None:
        yield False
        return
    index = list(positions)

    def pre_hook(_module, args):
        return (args[0][:, index], *args[1:])

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        yield True
    finally:
        handle.remove()


@dataclass
class _Plan:
    """What the step batches share: the input rows, where to scale, what to read, where to start."""

    input_ids: torch.Tensor  # (seq,) ids the step rows read
    position: int  # local position of the scaled activation
    targets: list[int]  # local positions of the answer tokens
    cache: object | None  # key/value cache of the causal prefix
    block_inputs: dict[int, torch.Tensor]  # clean input of each block, (1, seq, hidden)
    activations: torch.Tensor  # (layers, neurons) clean activations at the position
    probability: float


def _answer_log_probs(logits: torch.Tensor, answer_ids: Sequence[int], targets: Sequence[int] | None,
                      ) -> torch.Tensor:
    """(rows, answer tokens) log-probabilities from (rows, seq', vocab) logits."""
    if targets is not None:
        logits = logits[:, list(targets)]
    ids = torch.tensor(answer_ids, device=logits.device)
    log_probs = torch.log_softmax(at_least_float32(logits), dim=-1)
    return log_probs.gather(-1, ids.expand(logits.shape[0], -1)[..., None]).squeeze(-1)


def _cache_argument(model: nn.Module) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.x); use what this model takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _prefix_cache(lm: LanguageModel, ids: torch.Tensor) -> object:
    """The key/value cache of a causal model after reading ``ids`` (one row)."""
    out = lm.model(input_ids=ids, use_cache=True)
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _forward_logits(lm: LanguageModel, ids: torch.Tensor, targets: Sequence[int], cache: object | None,
                    ) -> torch.Tensor:
    """Logits at ``targets`` for a batch of rows (answer positions only when the head allows)."""
    kwargs = {_cache_argument(lm.model): cache, "use_cache": True} if cache is not None else {}
    with logits_at(lm, targets) as sliced:
        logits = lm.model(input_ids=ids, **kwargs).logits
    return logits if sliced else logits[:, list(targets)]


@torch.no_grad()
def _plan(lm: LanguageModel, query: EncodedQuery, objective: Objective) -> _Plan:
    device = lm.device
    ids = query.input_ids.to(device)
    position = query.position
    cache = None
    if lm.kind == "causal":
        targets = [t - position for t in query.target_positions]
        if position > 0:
            cache = _prefix_cache(lm, ids[None, :position])
        step_ids = ids[position:]
        local = 0
    else:
        targets, step_ids, local = list(query.target_positions), ids, position
    block_inputs: dict[int, torch.Tensor] = {}
    acts: dict[int, torch.Tensor] = {}

    def recorder(layer: int):
        def record(x: torch.Tensor) -> None:
            acts[layer] = x[0, local].detach()
        return record

    with ExitStack() as stack:
        stack.enter_context(_record_block_inputs(lm, block_inputs))
        for layer in range(lm.n_layers):
            stack.enter_context(on_ffn_input(lm, layer, recorder(layer)))
        logits = _forward_logits(lm, step_ids[None], targets, copy.deepcopy(cache))
    value = objective_of(_answer_log_probs(logits, query.answer_ids, None), objective)
    activations = torch.stack([acts[layer] for layer in range(lm.n_layers)])
    return _Plan(step_ids, local, targets, cache, block_inputs, activations, float(value[0]))


def _memory_per_row(lm: LanguageModel, plan: _Plan) -> float:
    """A generous estimate of the bytes one step row keeps alive through one forward and backward."""
    config = lm.model.config
    hidden = plan.block_inputs[0].shape[-1]
    seq = plan.input_ids.shape[0]
    context = seq + (plan.cache.get_seq_length() if plan.cache is not None else 0)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 8) or 8
    width = plan.activations.shape[1]
    vocab = getattr(config, "vocab_size", 50000)
    per_layer = seq * (16 * hidden + 4 * width + 3 * heads * context)
    kv = 2 * context * hidden * lm.n_layers  # each row's copy of the prefix cache
    element = torch.finfo(lm.dtype).bits // 8
    return element * (lm.n_layers * per_layer + kv) + 4 * 3 * len(plan.targets) * vocab


def integrated_gradients(
    lm: LanguageModel,
    prompt: Prompt | str | EncodedQuery,
    answer: str | None = None,
    *,
    steps: int = 20,
    objective: Objective = "prob",
    alphas: AlphaRule = "right",
    layers: Sequence[int] | None = None,
    memory_budget: int | None = None,
    batch_rows: int | None = None,
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
        alphas: "right" (k/m, the paper), "midpoint" ((k-½)/m) or "linspace" (EleutherAI).
        layers: only these layers (others score 0); all by default.
        memory_budget: bytes one batch of steps may use (default 2 GiB or KNEURON_MEMORY_BUDGET).
        batch_rows: force the number of (layer, α) rows per batch instead of the budget's choice.

    Returns:
        NeuronScores with the (layers, neurons) scores, the clean activations, the clean
        probability, each layer's zero-baseline probability and completeness gap.

    Example:
        >>> scores = integrated_gradients(lm, "The capital of France is", "Paris")
        >>> scores.top(3)      # [L27.N1011, ...]
    """
    if isinstance(prompt, EncodedQuery):
        query = prompt
    else:
        if answer is None:
            raise KneuronError("Give the answer to attribute (the correct continuation or mask filler).")
        query = encode(lm, prompt, answer)
    points = alpha_points(steps, alphas)
    chosen = sorted(set(range(lm.n_layers) if layers is None else layers))
    for layer in chosen:
        lm.check_layer(layer)
    if not chosen:
        raise KneuronError("No layers to attribute: give at least one layer index.")
    plan = _plan(lm, query, objective)
    steps_per_layer = [(float(a), True) for a in points.tolist()]
    budget = memory_budget or int(os.environ.get("KNEURON_MEMORY_BUDGET", DEFAULT_MEMORY_BUDGET))
    fits = max(1, int(budget // max(_memory_per_row(lm, plan), 1.0)))
    gradient_sum = torch.zeros_like(plan.activations, dtype=torch.float64)
    baseline = torch.full((lm.n_layers,), math.nan, dtype=torch.float64)
    target = min(batch_rows or MAX_ROWS, fits)
    with frozen_parameters(lm.model):
        for chunk in _batches(chosen, steps_per_layer, target):
            grads, values = _run_rows(lm, plan, query, chunk, objective)
            for (layer, alpha, _), grad, value in zip(chunk, grads, values, strict=True):
                gradient_sum[layer] += grad.double()
                if alpha == 0.0:  # linspace's first point is the zero baseline itself
                    baseline[layer] = value
        # the zero baseline of the completeness gap, where no step gave it: a forward pass, no gradient
        missing = [layer for layer in chosen if math.isnan(baseline[layer])]
        for chunk in _batches(missing, [(0.0, False)], target):
            _, values = _run_rows(lm, plan, query, chunk, objective, gradients=False)
            for (layer, _, _), value in zip(chunk, values, strict=True):
                baseline[layer] = value
    scores = plan.activations.double() * gradient_sum / steps
    gap = scores.sum(-1) - (plan.probability - baseline)
    return NeuronScores(
        scores=scores if plan.activations.dtype == torch.float64 else scores.float(),
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
    )


def _batches(layers: list[int], per_layer: list[tuple[float, bool]], rows: int,
             ) -> Iterator[list[tuple[int, float, bool]]]:
    """Group (layer, α, is_step) rows into batches of at most ``rows``.

    Neighbouring whole layers share a batch while they fit (rows join at their own layer, so
    mixing layers costs nothing, and larger batches cost less per row on a CPU); a layer with
    more rows than fit is split evenly into batches of its own.
    """
    batch: list[tuple[int, float, bool]] = []
    for layer in sorted(layers, reverse=True):
        layer_rows = [(layer, alpha, is_step) for alpha, is_step in per_layer]
        if len(layer_rows) > rows:
            if batch:
                yield batch
                batch = []
            parts = math.ceil(len(layer_rows) / rows)
            bounds = [len(layer_rows) * i // parts for i in range(parts + 1)]
            for first, last in itertools.pairwise(bounds):
                yield layer_rows[first:last]
            continue
        if len(batch) + len(layer_rows) > rows:
            yield batch
            batch = []
        batch.extend(layer_rows)
    if batch:
        yield batch


def _replace_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict] | None:
    """A block's (args, kwargs) with its hidden-state input replaced by ``hidden``."""
    if args:
        return (hidden, *args[1:]), kwargs
    for name in ("hidden_states", "hidden_state", "x"):
        if name in kwargs:
            return args, {**kwargs, name: hidden}
    return None


@contextmanager
def _entering(lm: LanguageModel, layer: int, clean: torch.Tensor, count: int, first: bool) -> Iterator[None]:
    """``count`` rows join the batch at block ``layer``, each with the block's clean input ``clean``
    (1, seq, hidden): appended to the rows already running, or the whole batch at its ``first`` block."""

    def enter(_module, args, kwargs):
        rows = clean.expand(count, -1, -1)
        if not first:
            rows = torch.cat([_hidden_from(args, kwargs), rows])
        return _replace_hidden(args, kwargs, rows)

    handle = lm.block(layer).register_forward_pre_hook(enter, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _stagger_cache(lm: LanguageModel, cache: object, active: dict[int, int]) -> object:
    """A copy of the prefix cache whose layer ``k`` holds one copy of the prefix per row running block ``k``
    (``active[k]``); the layers below the batch's first block are never read and stay as they are."""
    cache = copy.deepcopy(cache)
    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) < lm.n_layers:
        raise KneuronError(
            f"The key/value cache of {lm.name} ({type(cache).__name__}) has no per-layer list; kneuron needs "
            "transformers' layered caches (transformers >= 4.56)."
        )
    for layer, rows in active.items():
        if rows > 1:
            layers[layer].batch_repeat_interleave(rows)
    return cache


def _run_rows(lm: LanguageModel, plan: _Plan, query: EncodedQuery, chunk: list[tuple[int, float, bool]],
              objective: Objective, gradients: bool = True) -> tuple[list[torch.Tensor], list[float]]:
    """One batch: each row scales one layer by its α; returns per-row gradients (empty without
    ``gradients``) and objectives.

    Rows join the batch at their own layer (the clean input of that block is appended to the rows
    already running), so no row runs a block below the layer it scales. The batch's first block runs
    once, on the clean row, and its rows branch off at the FFN output projection (the attention and
    up-projection of that block are the same for all of them), unless the block flattens its tokens
    around the FFN (then they branch off at the block's input).
    """
    device, dtype = lm.device, plan.activations.dtype
    layers = sorted({row[0] for row in chunk})
    start = layers[0]
    branch_at_ffn = not lm.spec.flat_tokens
    order = [i for layer in layers for i, row in enumerate(chunk) if row[0] == layer]  # batch row -> chunk row
    count = {layer: sum(1 for row in chunk if row[0] == layer) for layer in layers}
    before: dict[int, int] = {}  # rows running when a layer's rows join
    running = 0
    for layer in layers:
        before[layer] = running
        running += count[layer]
    leaves: dict[int, torch.Tensor] = {}
    for layer in layers:
        alphas = torch.tensor([chunk[i][1] for i in order[before[layer]:before[layer] + count[layer]]],
                              dtype=dtype, device=device)
        leaves[layer] = (alphas[:, None] * plan.activations[layer][None]).requires_grad_(gradients)

    def scaler(layer: int):
        def scale(x: torch.Tensor) -> torch.Tensor:
            branching = layer == start and branch_at_ffn  # x is the one clean row
            out = x.expand(count[layer], -1, -1).clone() if branching else x.clone()
            out[before[layer]:before[layer] + count[layer], plan.position] = leaves[layer].to(x.dtype)
            return out
        return scale

    cache = None
    if plan.cache is not None:
        active = {layer: 0 for layer in range(start, lm.n_layers)}
        for layer in layers:
            for above in range(layer, lm.n_layers):
                active[above] += count[layer]
        if branch_at_ffn:
            active[start] = 1
        cache = _stagger_cache(lm, plan.cache, active)
    with torch.set_grad_enabled(gradients), ExitStack() as stack:
        stack.enter_context(start_at_layer(lm, start, plan.block_inputs[start]))
        for layer in layers:
            if layer != start or not branch_at_ffn:
                stack.enter_context(_entering(lm, layer, plan.block_inputs[layer], count[layer], layer == start))
        for layer in layers:
            stack.enter_context(on_ffn_input(lm, layer, scaler(layer)))
        logits = _forward_logits(lm, plan.input_ids[None], plan.targets, cache)
        values = objective_of(_answer_log_probs(logits, query.answer_ids, None), objective)
        grads = torch.autograd.grad(values.sum(), [leaves[layer] for layer in layers]) if gradients else ()
    per_row: list[torch.Tensor] = [torch.empty(0)] * len(chunk)
    row_values: list[float] = [0.0] * len(chunk)
    for batch_row, value in zip(order, values.detach().double().tolist(), strict=True):
        row_values[batch_row] = value
    for layer, grad in zip(layers if gradients else [], grads, strict=True):
        for j, chunk_row in enumerate(order[before[layer]:before[layer] + count[layer]]):
            per_row[chunk_row] = grad[j].detach()
    return per_row, row_values
