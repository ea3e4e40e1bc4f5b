"""Integrated gradients over FFN neurons, exact and fast.

The paper's attribution of neuron i of layer l for a prompt x with answer y*:

    Attr(w_i) = w̄_i · ∫₀¹ ∂P(y* | layer l's activations at the answer position set to α·w̄)/∂w_i dα

approximated by a Riemann sum over ``steps`` points (m = 20), one layer scaled at a time.
``alphas="right"`` uses α = k/m for k = 1..m (the paper's sum); ``"midpoint"`` uses (k − ½)/m;
``"linspace"`` uses m points from 0 to 1 inclusive (EleutherAI's re-implementation).

What makes it fast without changing the result:

* **Batching.** The (layer, α) pairs are rows of one batch; as many rows run together as the
  memory budget allows, and every row's gradient comes from one backward pass.
* **Prefix reuse.** Scaling layer l changes nothing below l, so the blocks below the lowest
  scaled layer of a batch are not run: their clean output is fed in directly.
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
#: token rows (batch rows x tokens each row runs) per batch when memory allows, and at least one layer's
#: steps: enough for efficient matrix products on a CPU, few enough that a batch spans few layers (a
#: batch starts at its lowest layer)
TARGET_TOKENS = 320
#: and at most this many rows: a causal model's rows are one token each, and more rows per batch mean
#: more layers per batch (measured on gpt2- and SmolLM2-shaped models)
MAX_ROWS = 128
#: a masked model's zero-baseline rows (forward only, each the whole sentence) run a few neighbouring layers
#: per batch, since a batch starts at its lowest layer; a causal model's rows are one token each, so
#: they share one batch (per-operator overhead outweighs the skipped blocks there)
BASELINE_LAYERS_PER_BATCH = 4


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
    # at least one whole layer per batch (splitting a layer's steps measured slower on a CPU), more
    # neighbouring layers while the batch stays small in tokens; the memory budget has the last word
    rows = min(MAX_ROWS, TARGET_TOKENS // len(plan.input_ids))
    target = min(batch_rows or max(len(steps_per_layer), rows), fits)
    with frozen_parameters(lm.model):
        for chunk in _batches(chosen, steps_per_layer, target):
            grads, values = _run_rows(lm, plan, query, chunk, objective)
            for (layer, alpha, _), grad, value in zip(chunk, grads, values, strict=True):
                gradient_sum[layer] += grad.double()
                if alpha == 0.0:  # linspace's first point is the zero baseline itself
                    baseline[layer] = value
        # the zero baseline of the completeness gap, where no step gave it: a forward pass, no gradient
        missing = [layer for layer in chosen if math.isnan(baseline[layer])]
        per_batch = target if lm.kind == "causal" else min(target, BASELINE_LAYERS_PER_BATCH)
        for chunk in _batches(missing, [(0.0, False)], per_batch):
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

    A batch starts at its lowest layer, so mixing distant layers wastes the blocks between them.
    Neighbouring whole layers share a batch while they fit (small batches cost more per row on a
    CPU); a layer with more rows than fit is split evenly into batches of its own.
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


def _run_rows(lm: LanguageModel, plan: _Plan, query: EncodedQuery, chunk: list[tuple[int, float, bool]],
              objective: Objective, gradients: bool = True) -> tuple[list[torch.Tensor], list[float]]:
    """One batch: each row scales one layer by its α; returns per-row gradients (empty without
    ``gradients``) and objectives."""
    count = len(chunk)
    start = min(row[0] for row in chunk)
    device, dtype = lm.device, plan.activations.dtype
    leaves: dict[int, torch.Tensor] = {}
    rows_of: dict[int, torch.Tensor] = {}
    for layer in sorted({row[0] for row in chunk}):
        index = [i for i, row in enumerate(chunk) if row[0] == layer]
        alphas = torch.tensor([chunk[i][1] for i in index], dtype=dtype, device=device)
        leaves[layer] = (alphas[:, None] * plan.activations[layer][None]).requires_grad_(gradients)
        rows_of[layer] = torch.tensor(index, device=device)

    def scaler(layer: int):
        def scale(x: torch.Tensor) -> torch.Tensor:
            out = x.clone()
            out[rows_of[layer], plan.position] = leaves[layer].to(x.dtype)
            return out
        return scale

    cache = None
    if plan.cache is not None:
        cache = copy.deepcopy(plan.cache)
        cache.batch_repeat_interleave(count)
    ids = plan.input_ids[None].expand(count, -1)
    hidden = plan.block_inputs[start].expand(count, -1, -1)
    with torch.set_grad_enabled(gradients), ExitStack() as stack:
        stack.enter_context(start_at_layer(lm, start, hidden))
        for layer in leaves:
            stack.enter_context(on_ffn_input(lm, layer, scaler(layer)))
        logits = _forward_logits(lm, ids, plan.targets, cache)
        values = objective_of(_answer_log_probs(logits, query.answer_ids, None), objective)
        layer_order = list(leaves) if gradients else []
        grads = torch.autograd.grad(values.sum(), [leaves[layer] for layer in layer_order]) if gradients else ()
    per_row: list[torch.Tensor] = [torch.empty(0)] * count
    for layer, grad in zip(layer_order, grads, strict=True):
        for j, row in enumerate(rows_of[layer].tolist()):
            per_row[row] = grad[j].detach()
    return per_row, values.detach().double().tolist()
