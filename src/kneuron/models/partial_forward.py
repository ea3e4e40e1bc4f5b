"""Partial forward passes: run a model from one block onward, with rows joining at later blocks.

The model surgery behind fast attribution (:mod:`kneuron.attribution.step_rows` batches integrated gradients'
rows with it), kept here because it is about models, not attribution: it knows blocks, their inputs, the output
head and the key/value cache, and nothing about α, objectives or scores.

* :func:`record_block_inputs` keeps each block's clean input; :func:`start_at_layer` then runs only the blocks
  from one layer on, from that input, and :func:`rows_entering` appends more rows at a later block
  (:func:`rows_join_at_their_depth` does both for a model whose one block runs at every depth, ALBERT);
* :func:`prefix_cache` encodes a causal prompt's prefix once; :func:`forward_logits` continues from it;
* :func:`logits_at` makes the output head compute only the positions that are read, and :func:`ffn_only_at`
  narrows a masked model's last FFN to them;
* :func:`frozen_parameters` turns off the weights' gradients for the duration.

Every context manager here restores the model on exit, also after an exception: hooks are removed, and an
instance ``forward`` that replaced a block's is taken away again, with the exact previous instance attribute (e.g.
the wrapper accelerate installs on every block of a ``device_map=`` model) put back.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from kneuron.errors import KneuronError
from kneuron.models.architectures import resolve
from kneuron.models.fused_head import answer_log_probs_head
from kneuron.models.hooks import at_depth, block_pre_hooks, forward_hook
from kneuron.models.language_model import LanguageModel

_HIDDEN_NAMES = ("hidden_states", "hidden_state", "x")
_ABSENT = object()


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


def hidden_from(args: tuple, kwargs: dict) -> torch.Tensor:
    """A block's hidden-state input among its (args, kwargs): the first positional one, else a known keyword."""
    if args:
        return args[0]
    for name in _HIDDEN_NAMES:
        if name in kwargs:
            return kwargs[name]
    raise KneuronError("Could not find the hidden states among a block's inputs; the block signature is unusual.")


def replace_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """A block's (args, kwargs) with its hidden-state input replaced by ``hidden``."""
    if args:
        return (hidden, *args[1:]), kwargs
    for name in _HIDDEN_NAMES:
        if name in kwargs:
            return args, {**kwargs, name: hidden}
    raise KneuronError("Could not find the hidden states among a block's inputs; the block signature is unusual.")


@contextmanager
def record_block_inputs(lm: LanguageModel, store: dict[int, torch.Tensor]) -> Iterator[None]:
    """Record each block's input hidden states (detached) into ``store`` (with shared layers: each depth's)."""
    handles = []

    def make(layer: int, current):
        def hook(_module, args, kwargs):
            if current():
                store[layer] = hidden_from(args, kwargs).detach()
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


@contextmanager
def start_at_layer(lm: LanguageModel, start: int, hidden: torch.Tensor) -> Iterator[None]:
    """Run only blocks ``start``.. : the blocks below pass their input through untouched and
    block ``start`` receives ``hidden`` (its clean input, one row per batch row) instead.

    A hook cannot skip a module's forward, so the blocks below ``start`` get an instance ``forward``; the
    exact previous instance attribute (e.g. the wrapper accelerate's hooks install on every block of a
    ``device_map=`` model) is put back on exit, also after an exception, and an absent one stays absent.
    """
    if lm.shared_layers:  # a passthrough forward would skip the block at every depth (see rows_join_at_their_depth)
        raise KneuronError(f"{lm.name} runs one block at several depths: its rows cannot start at a block.")
    skipped = [lm.block(layer) for layer in range(start)]
    saved = [(block, block.__dict__.get("forward", _ABSENT)) for block in skipped]

    def passthrough(*args, **kwargs):
        return hidden_from(args, kwargs)

    def feed(_module, args, kwargs):
        return replace_hidden(args, kwargs, hidden)

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
def rows_entering(lm: LanguageModel, layer: int, rows: torch.Tensor) -> Iterator[None]:
    """``rows`` (their clean inputs to block ``layer``) join the batch at that block, after the rows
    already running."""

    def enter(_module, args, kwargs):
        return replace_hidden(args, kwargs, torch.cat([hidden_from(args, kwargs), rows]))

    with forward_hook(lm.block(layer), enter, pre=True, with_kwargs=True):
        yield


@contextmanager
def batch_head_inputs_for_rows(lm: LanguageModel, start: int) -> Iterator[None]:
    """Repeat the block inputs laid out (batch · heads, ...) (``ArchSpec.batch_head_inputs``: BLOOM's ALiBi), which
    the model computes for the one row it is called on, once per row that blocks ``start``.. run. Entered after
    the hooks that feed and append rows, so it sees each block's final rows."""
    names = lm.spec.batch_head_inputs

    def repeat(_module, args, kwargs):
        rows = hidden_from(args, kwargs).shape[0]
        fitted = {name: kwargs[name].repeat(rows, *[1] * (kwargs[name].dim() - 1))
                  for name in names if isinstance(kwargs.get(name), torch.Tensor)}
        return args, {**kwargs, **fitted}

    with block_pre_hooks(lm, range(start, lm.n_layers) if names else (), repeat):
        yield


@contextmanager
def logits_at(lm: LanguageModel, targets: torch.Tensor) -> Iterator[bool]:
    """Make the output head compute logits only at ``targets`` ((rows, answer tokens) positions, or
    one row of them for every row; moved to the hidden states' device); yields whether it could (a model without
    ``get_output_embeddings`` computes logits at every position). The hook is removed on exit."""
    head = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None
    if not isinstance(head, nn.Module):
        yield False
        return

    def pre_hook(_module, args):
        return (at_targets(args[0], targets.to(args[0].device)), *args[1:])

    with forward_hook(head, pre_hook, pre=True):
        yield True


def at_targets(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(rows, answer tokens, ...) entries of (rows, seq, ...) ``x`` at each row's ``targets``."""
    if targets.shape[0] == 1:
        return x[:, targets[0]]
    return x[torch.arange(x.shape[0], device=x.device)[:, None], targets]


@contextmanager
def ffn_only_at(lm: LanguageModel, targets: torch.Tensor) -> Iterator[None]:
    """The last block's FFN reads only each row's ``targets`` ((rows, answer tokens)) and writes zeros
    elsewhere; the block's outputs at the other positions are then wrong, and unused."""
    first = resolve(lm.block(lm.n_layers - 1), lm.spec.ffn_in or "")
    assert first is not None  # checked when the LanguageModel was made
    length: dict[str, int] = {}

    def rows_of(x: torch.Tensor) -> torch.Tensor:  # fewer rows than targets: the one clean row of a branch
        return targets if x.shape[0] == targets.shape[0] else targets[:1].expand(x.shape[0], -1)

    def narrow(_module, args):
        length["seq"] = args[0].shape[1]
        return (at_targets(args[0], rows_of(args[0])), *args[1:])

    def widen(_module, _args, out):
        rows = torch.arange(out.shape[0], device=out.device)[:, None]
        full = out.new_zeros(out.shape[0], length["seq"], *out.shape[2:])
        return full.index_put((rows, rows_of(out)), out)

    with forward_hook(first, narrow, pre=True), forward_hook(lm.ffn_out(lm.n_layers - 1), widen):
        yield


def cache_argument(model: nn.Module) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.x); use what this model takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def prefix_cache(lm: LanguageModel, ids: torch.Tensor) -> object:
    """The key/value cache of a causal model after reading ``ids`` ((rows, tokens), no padding: every row the same
    length); rows that then continue from it in one batch: ``cache.batch_repeat_interleave(n)`` gives each row n
    copies, in row order (deep-copy it first when it is to be read again: a forward pass extends it in place).
    The output head computes no position (its logits are not read: on Gemma 3 they were a 262k-wide product per
    prefix token)."""
    with logits_at(lm, torch.empty((1, 0), dtype=torch.long, device=ids.device)):
        out = lm.model(input_ids=ids, use_cache=True)
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def cache_layers(lm: LanguageModel, cache: object) -> list:
    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) < lm.n_layers:
        raise KneuronError(
            f"The key/value cache of {lm.name} ({type(cache).__name__}) has no per-layer list; kneuron needs "
            "transformers' layered caches (transformers >= 4.56)."
        )
    return layers


def forward_logits(lm: LanguageModel, ids: torch.Tensor, targets: torch.Tensor, cache: object | None,
                    ) -> torch.Tensor:
    """(rows, answer tokens, vocabulary) logits at ``targets`` (answer positions only when the head allows)."""
    kwargs = {cache_argument(lm.model): cache, "use_cache": True} if cache is not None else {}
    with logits_at(lm, targets) as sliced:
        logits = lm.model(input_ids=ids, **kwargs).logits
    return logits if sliced else at_targets(logits, targets)


def forward_answer_log_probs(lm: LanguageModel, ids: torch.Tensor, targets: torch.Tensor, answers: torch.Tensor,
                             cache: object | None) -> torch.Tensor:
    """(rows, answer tokens) log-probabilities of ``answers`` at ``targets`` through the fused head of
    :mod:`kneuron.models.fused_head` (only for a model whose head :func:`~kneuron.models.fused_head.fusable_head`
    allows and which returns the head's output as its logits): the same values and gradients as
    :func:`forward_logits` followed by a log-softmax, without the (rows, answer tokens, vocabulary) logits."""
    kwargs = {cache_argument(lm.model): cache, "use_cache": True} if cache is not None else {}
    with answer_log_probs_head(lm, lambda x: at_targets(x, targets), answers):
        out = lm.model(input_ids=ids, **kwargs).logits
    return out[..., 0]


@contextmanager
def rows_join_at_their_depth(lm: LanguageModel, joining: dict[int, torch.Tensor]) -> Iterator[None]:
    """Depths below ``min(joining)`` pass their input through untouched; depth ``min(joining)`` reads
    ``joining[min(joining)]`` instead of its input, and every later depth ``d`` in ``joining`` appends the rows
    ``joining[d]`` (clean inputs to depth ``d``) after the rows already running.

    For a model whose one block runs at several depths (ALBERT), where :func:`start_at_layer` and
    :func:`rows_entering` cannot work: the block's hooks and forward are every depth's. Each block gets one
    instance ``forward`` that asks, at each call, which depth it is running (:func:`~kneuron.models.hooks.at_depth`).
    The exact previous instance attribute (e.g. accelerate's wrapper)
    is called through and put back on exit, also after an exception, and an absent one stays absent.
    """
    start = min(joining)
    blocks = {id(lm.block(d)): lm.block(d) for d in range(lm.n_layers)}
    saved = [(block, block.__dict__.get("forward", _ABSENT)) for block in blocks.values()]

    def make(block, previous, depths):
        def forward(*args, **kwargs):
            depth = next(d for d, current in depths if current())
            if depth < start:
                return hidden_from(args, kwargs)
            if depth == start:
                args, kwargs = replace_hidden(args, kwargs, joining[start])
            elif depth in joining:
                args, kwargs = replace_hidden(args, kwargs, torch.cat([hidden_from(args, kwargs), joining[depth]]))
            return previous(*args, **kwargs)
        return forward

    with ExitStack() as stack:
        try:
            for block, previous in saved:
                # the depth counters are registered (and so run) before the block's forward is called
                depths = [(d, stack.enter_context(at_depth(lm, d))) for d in range(lm.n_layers) if lm.block(d) is block]
                call = type(block).forward.__get__(block) if previous is _ABSENT else previous
                block.__dict__["forward"] = make(block, call, depths)
            yield
        finally:
            for block, previous in saved:
                if previous is _ABSENT:
                    block.__dict__.pop("forward", None)
                else:
                    block.__dict__["forward"] = previous


__all__ = [
    "at_targets", "batch_head_inputs_for_rows", "cache_argument", "cache_layers", "ffn_only_at",
    "forward_answer_log_probs", "forward_logits", "frozen_parameters", "hidden_from", "logits_at", "prefix_cache",
    "record_block_inputs", "replace_hidden", "rows_entering", "rows_join_at_their_depth", "start_at_layer",
]
