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
* the output head computes logits only at the answer positions, and a masked model's last block
  computes its FFN only there (when its :class:`~kneuron.models.architectures.ArchSpec` names
  ``ffn_in``): its other positions are never read.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from kneuron.attribution.ffn_norm import frozen_rows, recording_norm_scales
from kneuron.errors import KneuronError
from kneuron.facts.encoding import EncodedQuery, at_least_float32
from kneuron.models.architectures import resolve
from kneuron.models.hooks import at_depth, on_ffn_input
from kneuron.models.language_model import LanguageModel

Objective = Literal["prob", "logprob"]

#: one row: (prompt index, layer, α, whether it is an integration step (else a zero-baseline row))
Row = tuple[int, int, float, bool]

_HIDDEN_NAMES = ("hidden_states", "hidden_state", "x")


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


def _hidden_from(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    for name in _HIDDEN_NAMES:
        if name in kwargs:
            return kwargs[name]
    raise KneuronError("Could not find the hidden states among a block's inputs; the block signature is unusual.")


def _replace_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """A block's (args, kwargs) with its hidden-state input replaced by ``hidden``."""
    if args:
        return (hidden, *args[1:]), kwargs
    for name in _HIDDEN_NAMES:
        if name in kwargs:
            return args, {**kwargs, name: hidden}
    raise KneuronError("Could not find the hidden states among a block's inputs; the block signature is unusual.")


@contextmanager
def _record_block_inputs(lm: LanguageModel, store: dict[int, torch.Tensor]) -> Iterator[None]:
    """Record each block's input hidden states (detached) into ``store`` (with shared layers: each depth's)."""
    handles = []

    def make(layer: int, current):
        def hook(_module, args, kwargs):
            if current():
                store[layer] = _hidden_from(args, kwargs).detach()
        return hook

    with ExitStack() as depths:
        try:
            for layer in range(lm.n_layers):
                current = depths.enter_context(at_depth(lm, layer))  # its counting hook runs before ours
                handles.append(lm.block(layer).register_forward_pre_hook(make(layer, current), with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()


_ABSENT = object()


@contextmanager
def start_at_layer(lm: LanguageModel, start: int, hidden: torch.Tensor) -> Iterator[None]:
    """Run only blocks ``start``.. : the blocks below pass their input through untouched and
    block ``start`` receives ``hidden`` (its clean input, one row per batch row) instead.

    A hook cannot skip a module's forward, so the blocks below ``start`` get an instance ``forward``; the
    exact previous instance attribute (e.g. the wrapper accelerate's hooks install on every block of a
    ``device_map=`` model) is put back on exit, also after an exception, and an absent one stays absent.
    """
    if lm.shared_layers:  # a passthrough forward would skip the block at every depth (see shared_depths.py)
        raise KneuronError(f"{lm.name} runs one block at several depths: its rows cannot start at a block.")
    skipped = [lm.block(layer) for layer in range(start)]
    saved = [(block, block.__dict__.get("forward", _ABSENT)) for block in skipped]

    def passthrough(*args, **kwargs):
        return _hidden_from(args, kwargs)

    def feed(_module, args, kwargs):
        return _replace_hidden(args, kwargs, hidden)

    handles = []
    try:
        handles.append(lm.block(start).register_forward_pre_hook(feed, with_kwargs=True))
        for block in skipped:
            block.__dict__["forward"] = passthrough
        yield
    finally:
        for handle in handles:
            handle.remove()
        for block, previous in saved:
            if previous is _ABSENT:
                block.__dict__.pop("forward", None)
            else:
                block.__dict__["forward"] = previous


@contextmanager
def _entering(lm: LanguageModel, layer: int, rows: torch.Tensor) -> Iterator[None]:
    """``rows`` (their clean inputs to block ``layer``) join the batch at that block, after the rows
    already running."""

    def enter(_module, args, kwargs):
        return _replace_hidden(args, kwargs, torch.cat([_hidden_from(args, kwargs), rows]))

    handle = lm.block(layer).register_forward_pre_hook(enter, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _batch_head_inputs_for_rows(lm: LanguageModel, start: int) -> Iterator[None]:
    """Repeat the block inputs laid out (batch · heads, ...) (``ArchSpec.batch_head_inputs``: BLOOM's ALiBi), which
    the model computes for the one row it is called on, once per row that blocks ``start``.. run. Entered after
    the hooks that feed and append rows, so it sees each block's final rows."""
    names = lm.spec.batch_head_inputs
    handles = []

    def repeat(_module, args, kwargs):
        rows = _hidden_from(args, kwargs).shape[0]
        fitted = {name: kwargs[name].repeat(rows, *[1] * (kwargs[name].dim() - 1))
                  for name in names if isinstance(kwargs.get(name), torch.Tensor)}
        return args, {**kwargs, **fitted}

    try:
        if names:
            for layer in range(start, lm.n_layers):
                handles.append(lm.block(layer).register_forward_pre_hook(repeat, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def logits_at(lm: LanguageModel, targets: torch.Tensor) -> Iterator[bool]:
    """Make the output head compute logits only at ``targets`` ((rows, answer tokens) positions, or
    one row of them for every row); yields whether it could."""
    head = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None
    if head is None:
        yield False
        return

    def pre_hook(_module, args):
        return (_at(args[0], targets), *args[1:])

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        yield True
    finally:
        handle.remove()


def _at(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(rows, answer tokens, ...) entries of (rows, seq, ...) ``x`` at each row's ``targets``."""
    if targets.shape[0] == 1:
        return x[:, targets[0]]
    return x[torch.arange(x.shape[0], device=x.device)[:, None], targets]


@contextmanager
def _ffn_only_at(lm: LanguageModel, targets: torch.Tensor) -> Iterator[None]:
    """The last block's FFN reads only each row's ``targets`` ((rows, answer tokens)) and writes zeros
    elsewhere; the block's outputs at the other positions are then wrong, and unused."""
    first = resolve(lm.block(lm.n_layers - 1), lm.spec.ffn_in or "")
    assert first is not None  # checked when the LanguageModel was made
    length: dict[str, int] = {}

    def rows_of(x: torch.Tensor) -> torch.Tensor:  # fewer rows than targets: the one clean row of a branch
        return targets if x.shape[0] == targets.shape[0] else targets[:1].expand(x.shape[0], -1)

    def narrow(_module, args):
        length["seq"] = args[0].shape[1]
        return (_at(args[0], rows_of(args[0])), *args[1:])

    def widen(_module, _args, out):
        rows = torch.arange(out.shape[0], device=out.device)[:, None]
        full = out.new_zeros(out.shape[0], length["seq"], *out.shape[2:])
        return full.index_put((rows, rows_of(out)), out)

    handles = []
    try:
        handles.append(first.register_forward_pre_hook(narrow))
        handles.append(lm.ffn_out(lm.n_layers - 1).register_forward_hook(widen))
        yield
    finally:
        for handle in handles:
            handle.remove()


def cache_argument(model: nn.Module) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.x); use what this model takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def prefix_cache(lm: LanguageModel, ids: torch.Tensor) -> object:
    """The key/value cache of a causal model after reading ``ids`` ((rows, tokens), no padding: every row the same
    length); rows that then continue from it in one batch: ``cache.batch_repeat_interleave(n)`` gives each row n
    copies, in row order (deep-copy it first when it is to be read again: a forward pass extends it in place)."""
    out = lm.model(input_ids=ids, use_cache=True)
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _cache_layers(lm: LanguageModel, cache: object) -> list:
    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) < lm.n_layers:
        raise KneuronError(
            f"The key/value cache of {lm.name} ({type(cache).__name__}) has no per-layer list; kneuron needs "
            "transformers' layered caches (transformers >= 4.56)."
        )
    return layers


def _forward_logits(lm: LanguageModel, ids: torch.Tensor, targets: torch.Tensor, cache: object | None,
                    ) -> torch.Tensor:
    """(rows, answer tokens, vocabulary) logits at ``targets`` (answer positions only when the head allows)."""
    kwargs = {cache_argument(lm.model): cache, "use_cache": True} if cache is not None else {}
    with logits_at(lm, targets) as sliced:
        logits = lm.model(input_ids=ids, **kwargs).logits
    return logits if sliced else _at(logits, targets)


def _answer_log_probs(logits: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """(rows, answer tokens) log-probabilities of ``answer_ids`` ((rows or 1, answer tokens))."""
    log_probs = torch.log_softmax(at_least_float32(logits), dim=-1)
    return log_probs.gather(-1, answer_ids.to(logits.device).expand(logits.shape[0], -1)[..., None]).squeeze(-1)


def _answer_ranks(logits: torch.Tensor, answer_ids: torch.Tensor) -> tuple[int, ...]:
    """Each answer token's rank (1 = the most likely) among the (answer tokens, vocabulary) ``logits`` at its
    position; tokens with equal logits share the best rank."""
    logits = at_least_float32(logits)
    own = logits.gather(-1, answer_ids.to(logits.device)[:, None])
    return tuple(int(r) + 1 for r in (logits > own).sum(-1).tolist())


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

    def recorder(layer: int):
        def record(x: torch.Tensor) -> None:
            acts[layer] = x[0, local].detach()
        return record

    with ExitStack() as stack:
        stack.enter_context(_record_block_inputs(lm, block_inputs))
        for layer in range(lm.n_layers):
            stack.enter_context(on_ffn_input(lm, layer, recorder(layer)))
        if lm.spec.ffn_output_norm is not None:
            stack.enter_context(recording_norm_scales(lm, local, norm_scales))
        logits = _forward_logits(lm, step_ids[None], target_tensor[None], copy.deepcopy(cache))
    log_p = _answer_log_probs(logits, answer_ids[None]).double().sum(-1)
    value = objective_of(log_p[:, None], objective)  # in float64: exp() of a float32 log P below -103 is 0
    activations = torch.stack([acts[layer] for layer in range(lm.n_layers)])
    scales = (torch.tensor([norm_scales[layer] for layer in range(lm.n_layers)], dtype=torch.float64)
              if norm_scales else None)
    return Plan(step_ids, local, target_tensor, answer_ids, cache, block_inputs, activations, float(value[0]),
                float(log_p[0]), _answer_ranks(logits[0], answer_ids), int(logits.shape[-1]), scales)


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


def _by_prompt(values: dict[int, torch.Tensor], prompts: Sequence[int]) -> torch.Tensor:
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
    targets = _by_prompt({p: plans[p].targets[None] for p in every}, every)
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
    if plans[first_prompt].cache is not None:
        cache = copy.deepcopy(plans[first_prompt].cache)
        mine = _cache_layers(lm, cache)
        for layer in range(start, lm.n_layers):
            active = every[:sum(len(members[k]) for k in layers if k <= layer)]
            if layer == start and branch_at_ffn:
                active = active[:1]
            theirs = {p: _cache_layers(lm, plans[p].cache)[layer] for p in set(active)}
            mine[layer].keys = _by_prompt({p: c.keys for p, c in theirs.items()}, active)
            mine[layer].values = _by_prompt({p: c.values for p, c in theirs.items()}, active)
    with torch.set_grad_enabled(gradients), ExitStack() as stack:
        clean_rows = {layer: _by_prompt({p: plans[p].block_inputs[layer] for p in prompts_of[layer]},
                                        prompts_of[layer]) for layer in layers}
        first_rows = plans[first_prompt].block_inputs[start] if branch_at_ffn else clean_rows[start]
        stack.enter_context(start_at_layer(lm, start, first_rows))
        for layer in layers[1:]:
            stack.enter_context(_entering(lm, layer, clean_rows[layer]))
        stack.enter_context(_batch_head_inputs_for_rows(lm, start))
        for layer in layers:
            stack.enter_context(on_ffn_input(lm, layer, scaler(layer)))
            if frozen_norm:  # the norm reads the whole sequence again (after _ffn_only_at widens it)
                held = torch.stack([plans[p].norm_scales[layer] for p in prompts_of[layer]])  # type: ignore[index]
                where = torch.tensor([plans[p].position for p in prompts_of[layer]], device=device)
                stack.enter_context(frozen_rows(lm, layer, layout.rows_of(layer), where, held))
        if narrowed:
            stack.enter_context(_ffn_only_at(lm, targets))
        logits = _forward_logits(lm, plans[first_prompt].input_ids[None], targets, cache)
        answers = _by_prompt({p: plans[p].answer_ids[None] for p in every}, every)
        log_p = _answer_log_probs(logits, answers).sum(-1)
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
        clean = _by_prompt({p: plans[p].activations[layer][None] for p in prompts_of[layer]}, prompts_of[layer])
        leaves[layer] = (alphas[:, None] * clean).requires_grad_(gradients)
    return RowLayout(order, layers, members, prompts_of, before, leaves, [chunk[i][0] for i in order])
