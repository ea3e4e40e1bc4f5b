"""The machinery behind fast integrated gradients: one batch of (prompt, layer, α) rows at a time.

A *row* scales one layer's activations at one prompt's answer position by one α. Rows of several
layers and of several prompts share a batch; what keeps that exact and cheap:

* a row joins the batch at its own layer's block, with that prompt's clean input to the block
  (appended to the rows already running), so no row runs a block below the layer it scales and
  the blocks below the batch's lowest layer do not run at all;
* with one prompt in the batch, the lowest block runs once, on the clean row, and its rows branch
  off at the FFN output projection (its attention and up-projection are the same for every α);
* the model itself is called on one row: everything it computes before the blocks (position
  embeddings, masks) is the same for every row of a batch, because a batch only holds prompts of
  the same shape (:func:`shape_key`); the rows' own states are fed in at the blocks;
* causal models read a key/value cache of the prompt before the answer position, so the rows
  hold only the answer position and the answer tokens after it;
* the output head computes logits only at the answer positions (and, where the model allows it, only each
  row's answer log-probability and its gradient, vocabulary chunk by chunk, never the whole logits:
  :mod:`kneuron.models.fused_head`), and a masked model's last block
  computes its FFN only there (when its :class:`~kneuron.models.architectures.ArchSpec` names
  ``ffn_in``): its other positions are never read.

This module decides the rows and their batches (:func:`make_plan`, :func:`batches`, :func:`run_rows`); the model
surgery that runs a model from a block onward, caches a prefix and narrows the head is
:mod:`kneuron.models.partial_forward`'s.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from kneuron.attribution.ffn_norm import frozen_rows, recording_norm_scales
from kneuron.attribution.objective import Objective, answer_token_log_probs, answer_token_ranks, objective_of
from kneuron.facts.encoding import EncodedQuery
from kneuron.models.fused_head import fusable_head, recording_head_output
from kneuron.models.hooks import on_ffn_input
from kneuron.models.language_model import LanguageModel
from kneuron.models.padded_context import pad_keys, padded_context_rows, pads_contexts
from kneuron.models.partial_forward import (
    at_targets,
    batch_head_inputs_for_rows,
    cache_layers,
    ffn_only_at,
    forward_answer_log_probs,
    forward_logits,
    logits_at,
    prefix_cache,
    record_block_inputs,
    rows_entering,
    start_at_layer,
)

#: one row: (prompt index, layer, α, whether it is an integration step (else a zero-baseline row))
Row = tuple[int, int, float, bool]


@dataclass
class Plan:
    """One prompt, prepared: the ids its rows read, where to scale and read, its clean states."""

    input_ids: torch.Tensor  # (seq,) ids the step rows read
    position: int  # local position of the scaled activation
    targets: torch.Tensor  # (answer tokens,) local positions of the answer tokens
    answer_ids: torch.Tensor  # (answer tokens,)
    cache: object | None  # key/value cache of the causal prefix
    block_inputs: dict[int, torch.Tensor]  # clean input of each block, (1, seq, hidden)
    activations: torch.Tensor  # (layers, neurons) clean activations at the position
    probability: float  # the clean objective, computed in float64 from the log-probability
    log_probability: float = 0.0  # the clean joint log-probability of the answer
    answer_ranks: tuple[int, ...] = ()  # each answer token's clean rank at its position (1 = most likely)
    vocab_size: int = 0
    #: (layers,) float64: each layer's post-FFN norm factor 1/RMS at the position (models with such a norm)
    norm_scales: torch.Tensor | None = None
    #: whether the model returned its head's output unchanged as its logits on the clean pass, so that the rows may
    #: read the answer's log-probability through the fused head (where the head itself allows it when they run)
    fused_head: bool = False

    @property
    def position_among_targets(self) -> int:
        """Where the scaled position is among the answer positions (it is the first one)."""
        return int((self.targets == self.position).nonzero()[0, 0])

    @property
    def context(self) -> int:
        """Tokens in the prefix cache."""
        return self.cache.get_seq_length() if self.cache is not None else 0


def shape_key(plan: Plan) -> tuple[int, int, int]:
    """Prompts whose rows may share a batch: same tokens per row, cached prefix and answer length."""
    return len(plan.input_ids), plan.context, len(plan.answer_ids)


def batch_key(lm: LanguageModel, plan: Plan) -> tuple[int, int, int]:
    """Prompts whose rows may share a batch on ``lm``: :func:`shape_key`, but prefixes of any length (> 0) share one
    where :func:`~kneuron.models.padded_context.pads_contexts` allows it (the cache padded to the longest)."""
    if plan.context > 0 and pads_contexts(lm):
        return len(plan.input_ids), -1, len(plan.answer_ids)
    return shape_key(plan)


@torch.no_grad()
def make_plan(lm: LanguageModel, query: EncodedQuery, objective: Objective) -> Plan:
    """One clean pass over ``query``: its activations, block inputs, cache and objective."""
    device = lm.device
    ids = query.input_ids.to(device)
    position = query.position
    cache = None
    if lm.kind == "causal":
        targets = [t - position for t in query.target_positions]
        if position > 0:
            cache = prefix_cache(lm, ids[None, :position])
        step_ids = ids[position:]
        local = 0
    else:
        targets, step_ids, local = list(query.target_positions), ids, position
    target_tensor = torch.tensor(targets, device=device)
    answer_ids = torch.tensor(query.answer_ids, device=device)
    block_inputs: dict[int, torch.Tensor] = {}
    acts: dict[int, torch.Tensor] = {}
    norm_scales: dict[int, float] = {}
    head_outputs: list[torch.Tensor] = []

    def recorder(layer: int):
        def record(x: torch.Tensor) -> None:
            acts[layer] = x[0, local].detach()
        return record

    with ExitStack() as stack:
        stack.enter_context(record_block_inputs(lm, block_inputs))
        for layer in range(lm.n_layers):
            stack.enter_context(on_ffn_input(lm, layer, recorder(layer)))
        if lm.spec.ffn_output_norm is not None:
            stack.enter_context(recording_norm_scales(lm, local, norm_scales))
        stack.enter_context(recording_head_output(lm, head_outputs))
        logits = forward_logits(lm, step_ids[None], target_tensor[None], copy.deepcopy(cache))
    fused = len(head_outputs) == 1 and logits is head_outputs[0]
    log_p = answer_token_log_probs(logits, answer_ids[None]).double().sum(-1)
    value = objective_of(log_p[:, None], objective)  # in float64: exp() of a float32 log P below -103 is 0
    activations = torch.stack([acts[layer] for layer in range(lm.n_layers)])
    scales = (torch.tensor([norm_scales[layer] for layer in range(lm.n_layers)], dtype=torch.float64)
              if norm_scales else None)
    return Plan(step_ids, local, target_tensor, answer_ids, cache, block_inputs, activations, float(value[0]),
                float(log_p[0]), answer_token_ranks(logits[0], answer_ids), int(logits.shape[-1]), scales, fused)


@torch.no_grad()
def make_plans(lm: LanguageModel, queries: Sequence[EncodedQuery], objective: Objective) -> list[Plan]:
    """Each query's :func:`make_plan`, from one clean pass over all of them where the model allows it.

    :func:`make_plan` runs two forward passes per prompt (its prefix into the cache, then the answer position);
    on a CPU each reads every weight of the model for a handful of tokens. Causal prompts of a model whose rows
    may pad their prefixes (:func:`~kneuron.models.padded_context.pads_contexts`), with the same number of answer
    tokens, run instead as one batch right-padded to the longest (a causal model's real tokens never read the later
    padding, so no mask is needed): each prompt's cache (cut at its answer position), block inputs and activations
    are cut from it. The values are :func:`make_plan`'s up to float rounding (the tests compare them), and depend
    on the other queries of the call through that rounding: two-stage-ig calls it on one fact's bag. Other queries
    and models get :func:`make_plan` one by one."""
    if len(queries) < 2 or not pads_contexts(lm) or any(q.position == 0 for q in queries):
        return [make_plan(lm, query, objective) for query in queries]
    if len({len(q.answer_ids) for q in queries}) > 1:  # one batch per answer length
        by_length: dict[int, list[int]] = {}
        for index, query in enumerate(queries):
            by_length.setdefault(len(query.answer_ids), []).append(index)
        plans: list[Plan | None] = [None] * len(queries)
        for indices in by_length.values():
            for index, plan in zip(indices, make_plans(lm, [queries[i] for i in indices], objective), strict=True):
                plans[index] = plan
        return [plan for plan in plans if plan is not None]
    device = lm.device
    lengths = [len(q.input_ids) for q in queries]
    ids = torch.stack([torch.cat([q.input_ids, q.input_ids[-1:].expand(max(lengths) - n)]).to(device)
                       for q, n in zip(queries, lengths, strict=True)])
    rows = torch.arange(len(queries), device=device)
    positions = torch.tensor([q.position for q in queries], device=device)
    targets = torch.tensor([list(q.target_positions) for q in queries], device=device)
    block_inputs: dict[int, torch.Tensor] = {}
    acts: dict[int, torch.Tensor] = {}
    head_outputs: list[torch.Tensor] = []

    def recorder(layer: int):
        def record(x: torch.Tensor) -> None:
            acts[layer] = x[rows, positions].detach()
        return record

    with ExitStack() as stack:
        stack.enter_context(record_block_inputs(lm, block_inputs))
        for layer in range(lm.n_layers):
            stack.enter_context(on_ffn_input(lm, layer, recorder(layer)))
        stack.enter_context(recording_head_output(lm, head_outputs))
        sliced = stack.enter_context(logits_at(lm, targets))
        out = lm.model(input_ids=ids, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    if any(type(layer).__name__ != "DynamicLayer" for layer in cache_layers(lm, cache)):
        return [make_plan(lm, query, objective) for query in queries]  # a cache that cannot be cut per prompt
    logits = out.logits if sliced else at_targets(out.logits, targets)
    fused = len(head_outputs) == 1 and out.logits is head_outputs[0]
    made = []
    for p, query in enumerate(queries):
        position, answer_ids = query.position, torch.tensor(query.answer_ids, device=device)
        own = copy.deepcopy(cache)
        for layer, theirs in zip(cache_layers(lm, own), cache_layers(lm, cache), strict=True):
            theirs_keys, theirs_values = theirs.keys, theirs.values
            layer.keys = theirs_keys[p:p + 1, :, :position].clone()
            layer.values = theirs_values[p:p + 1, :, :position].clone()
        log_p = answer_token_log_probs(logits[p:p + 1], answer_ids[None]).double().sum(-1)
        value = objective_of(log_p[:, None], objective)
        made.append(Plan(
            query.input_ids[position:].to(device), 0,
            torch.tensor([t - position for t in query.target_positions], device=device), answer_ids, own,
            {layer: block_inputs[layer][p:p + 1, position:lengths[p]].clone() for layer in range(lm.n_layers)},
            torch.stack([acts[layer][p] for layer in range(lm.n_layers)]), float(value[0]), float(log_p[0]),
            answer_token_ranks(logits[p], answer_ids), int(logits.shape[-1]), None, fused))
    return made


def memory_per_row(lm: LanguageModel, plan: Plan) -> float:
    """A generous estimate of the bytes one step row keeps alive through one forward and backward."""
    config = lm.model.config
    hidden = plan.block_inputs[0].shape[-1]
    seq = plan.input_ids.shape[0]
    context = seq + plan.context
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 8) or 8
    width = plan.activations.shape[1]
    vocab = getattr(config, "vocab_size", 50000)
    per_layer = seq * (16 * hidden + 4 * width + 3 * heads * context)
    kv = 2 * context * hidden * lm.n_layers  # each row's copy of the prefix cache
    element = torch.finfo(lm.dtype).bits // 8
    return element * (lm.n_layers * per_layer + kv) + 4 * 3 * len(plan.targets) * vocab


def batches(layer_rows: dict[int, list[Row]], rows: int) -> Iterator[list[Row]]:
    """Group each layer's rows (all prompts' steps at that layer) into batches of at most ``rows``.

    Neighbouring whole layers share a batch while they fit (rows join at their own layer, so mixing
    layers costs nothing, and larger batches cost less per row on a CPU); a layer with more rows than
    fit is split evenly into batches of its own.
    """
    batch: list[Row] = []
    for layer in sorted(layer_rows, reverse=True):
        own = layer_rows[layer]
        if len(own) > rows:
            if batch:
                yield batch
                batch = []
            parts = math.ceil(len(own) / rows)
            bounds = [len(own) * i // parts for i in range(parts + 1)]
            for first, last in itertools.pairwise(bounds):
                yield own[first:last]
            continue
        if len(batch) + len(own) > rows:
            yield batch
            batch = []
        batch.extend(own)
    if batch:
        yield batch


def by_prompt(values: dict[int, torch.Tensor], prompts: Sequence[int]) -> torch.Tensor:
    """One entry per row: ``values[p]`` (a (1, ...) tensor) for each row's prompt ``p``, in row order."""
    parts = [values[p].expand(len(list(run)), *values[p].shape[1:])
             for p, run in itertools.groupby(prompts)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def run_rows(lm: LanguageModel, plans: Sequence[Plan], chunk: list[Row], objective: Objective,
             gradients: bool = True, frozen_norm: bool = False) -> tuple[list[torch.Tensor], list[float]]:
    """One batch of rows (prompts of one :func:`shape_key`); returns per-row gradients with respect to
    the scaled activations (empty without ``gradients``) and per-row objectives, in ``chunk``'s order.

    ``frozen_norm``: each row's own layer's post-FFN norm holds its clean factor 1/RMS at the scaled position
    (:mod:`kneuron.attribution.ffn_norm`)."""
    device = lm.device
    layout = lay_out(lm, plans, chunk, gradients)
    layers, members, prompts_of = layout.layers, layout.members, layout.prompts_of
    leaves, every = layout.leaves, layout.every
    start = layers[0]
    branch_at_ffn = len({row[0] for row in chunk}) == 1 and not lm.spec.flat_tokens
    first_prompt = every[0]
    targets = by_prompt({p: plans[p].targets[None] for p in every}, every)
    narrowed = lm.kind == "mlm" and lm.spec.ffn_in is not None and targets.shape[1] < len(plans[first_prompt].input_ids)

    def scaler(layer: int):
        rows = layout.rows_of(layer)
        if narrowed and layer == lm.n_layers - 1:  # that FFN reads the answer positions only
            where = [plans[p].position_among_targets for p in prompts_of[layer]]
        else:
            where = [plans[p].position for p in prompts_of[layer]]
        positions = torch.tensor(where, device=device)

        def scale(x: torch.Tensor) -> torch.Tensor:
            branching = layer == start and branch_at_ffn  # x is the one clean row
            out = x.expand(len(members[layer]), -1, -1).clone() if branching else x.clone()
            out[rows, positions] = leaves[layer].to(x.dtype)
            return out
        return scale

    cache = None
    contexts = {plans[p].context for p in every}
    padded = max(contexts) if len(contexts) > 1 else None  # prefixes of several lengths (padded_context_rows)
    if plans[first_prompt].cache is not None:
        cache = copy.deepcopy(plans[first_prompt].cache)
        mine = cache_layers(lm, cache)
        for layer in range(lm.n_layers if padded else 0):  # the cache's length is read from its first layers
            mine[layer].keys = pad_keys(mine[layer].keys, padded)
            mine[layer].values = pad_keys(mine[layer].values, padded)
        for layer in range(start, lm.n_layers):
            active = every[:sum(len(members[k]) for k in layers if k <= layer)]
            if layer == start and branch_at_ffn:
                active = active[:1]
            theirs = {p: cache_layers(lm, plans[p].cache)[layer] for p in set(active)}
            if padded is not None:
                theirs = {p: (pad_keys(c.keys, padded), pad_keys(c.values, padded)) for p, c in theirs.items()}
            else:  # as they are (a sliding window's cache holds fewer keys than the context)
                theirs = {p: (c.keys, c.values) for p, c in theirs.items()}
            mine[layer].keys = by_prompt({p: kv[0] for p, kv in theirs.items()}, active)
            mine[layer].values = by_prompt({p: kv[1] for p, kv in theirs.items()}, active)
    with torch.set_grad_enabled(gradients), ExitStack() as stack:
        clean_rows = {layer: by_prompt({p: plans[p].block_inputs[layer] for p in prompts_of[layer]},
                                        prompts_of[layer]) for layer in layers}
        first_rows = plans[first_prompt].block_inputs[start] if branch_at_ffn else clean_rows[start]
        stack.enter_context(start_at_layer(lm, start, first_rows))
        for layer in layers[1:]:
            stack.enter_context(rows_entering(lm, layer, clean_rows[layer]))
        stack.enter_context(batch_head_inputs_for_rows(lm, start))
        if padded is not None:
            if cache is None or not pads_contexts(lm) or min(contexts) == 0:
                raise AssertionError("rows of prompts with prefixes of several lengths share a batch only where "
                                     "pads_contexts(lm) allows it and every prompt has a cached prefix")
            stack.enter_context(padded_context_rows(lm, start, [plans[p].context for p in every], padded,
                                                    len(plans[first_prompt].input_ids)))
        for layer in layers:
            stack.enter_context(on_ffn_input(lm, layer, scaler(layer)))
            if frozen_norm:  # the norm reads the whole sequence again (after ffn_only_at widens it)
                held = torch.stack([plans[p].norm_scales[layer] for p in prompts_of[layer]])  # type: ignore[index]
                where = torch.tensor([plans[p].position for p in prompts_of[layer]], device=device)
                stack.enter_context(frozen_rows(lm, layer, layout.rows_of(layer), where, held))
        if narrowed:
            stack.enter_context(ffn_only_at(lm, targets))
        answers = by_prompt({p: plans[p].answer_ids[None] for p in every}, every)
        if fusable_head(lm) and all(plans[p].fused_head for p in every):
            log_p = forward_answer_log_probs(lm, plans[first_prompt].input_ids[None], targets, answers, cache).sum(-1)
        else:
            logits = forward_logits(lm, plans[first_prompt].input_ids[None], targets, cache)
            log_p = answer_token_log_probs(logits, answers).sum(-1)
        # the objective in float64 from log P; gradients in log space: dP/da = P · dlogP/da, with P in float64,
        # so that a P below float32's range (1e-45) neither underflows to 0 nor drags its gradients to 0
        values = objective_of(log_p.detach().double()[:, None], objective)
        grads = torch.autograd.grad(log_p.sum(), [leaves[layer] for layer in layers]) if gradients else ()
    return layout.in_chunk_order(values, grads, objective)


@dataclass
class RowLayout:
    """Where a chunk's rows sit in their batch: sorted by layer (the order in which they join the batch), then
    prompt, then as given; layer l's rows are batch rows ``before[l]`` .. ``before[l] + len(members[l]) - 1``."""

    order: list[int]  # batch row k is chunk row order[k]
    layers: list[int]  # the layers (or depths) the chunk scales, ascending
    members: dict[int, list[int]]  # each layer's chunk rows, in batch order
    prompts_of: dict[int, list[int]]  # the prompt of each of those rows
    before: dict[int, int]  # batch rows running when a layer's rows join
    leaves: dict[int, torch.Tensor]  # each layer's scaled activations (rows, neurons), the gradients' leaves
    every: list[int]  # the prompt of each batch row

    def rows_of(self, layer: int) -> torch.Tensor:
        """The batch rows that scale ``layer``."""
        first = self.before[layer]
        return torch.arange(first, first + len(self.members[layer]), device=self.leaves[layer].device)

    def in_chunk_order(self, values: torch.Tensor, grads: Sequence[torch.Tensor], objective: Objective,
                       ) -> tuple[list[torch.Tensor], list[float]]:
        """The batch's per-row gradients (none when ``grads`` is empty) and objectives, back in the chunk's order.
        With the "prob" objective a gradient of log P becomes one of P (dP/da = P · dlogP/da)."""
        per_row: list[torch.Tensor] = [torch.empty(0)] * len(self.order)
        row_values: list[float] = [0.0] * len(self.order)
        for chunk_row, value in zip(self.order, values.tolist(), strict=True):
            row_values[chunk_row] = value
        for layer, grad in zip(self.layers if grads else [], grads, strict=True):
            for j, chunk_row in enumerate(self.members[layer]):
                row_grad = grad[j].detach().double()
                per_row[chunk_row] = row_grad * values[self.before[layer] + j] if objective == "prob" else row_grad
        return per_row, row_values


def lay_out(lm: LanguageModel, plans: Sequence[Plan], chunk: list[Row], gradients: bool) -> RowLayout:
    """The :class:`RowLayout` of ``chunk``, with each row's leaf α · (its prompt's clean activations at its layer)
    on the model's device (requiring a gradient when ``gradients``)."""
    device, dtype = lm.device, plans[chunk[0][0]].activations.dtype
    order = sorted(range(len(chunk)), key=lambda i: (chunk[i][1], chunk[i][0]))
    layers = sorted({row[1] for row in chunk})
    members = {layer: [i for i in order if chunk[i][1] == layer] for layer in layers}
    prompts_of = {layer: [chunk[i][0] for i in members[layer]] for layer in layers}
    before: dict[int, int] = {}
    running = 0
    for layer in layers:
        before[layer] = running
        running += len(members[layer])
    leaves: dict[int, torch.Tensor] = {}
    for layer in layers:
        alphas = torch.tensor([chunk[i][2] for i in members[layer]], dtype=dtype, device=device)
        clean = by_prompt({p: plans[p].activations[layer][None] for p in prompts_of[layer]}, prompts_of[layer])
        leaves[layer] = (alphas[:, None] * clean).requires_grad_(gradients)
    return RowLayout(order, layers, members, prompts_of, before, leaves, [chunk[i][0] for i in order])


__all__ = ["Plan", "Row", "RowLayout", "batch_key", "batches", "by_prompt", "lay_out", "make_plan", "make_plans",
           "memory_per_row",
           "run_rows", "shape_key"]
