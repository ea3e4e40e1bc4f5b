"""Integrated-gradients rows for a model with shared layers (ALBERT), where one block runs at every depth.

The rows are those of :mod:`kneuron.attribution.step_rows`: a row scales one depth's activations at one prompt's
answer position by one α, and joins the batch at its own depth with that prompt's clean input to it, so no row
runs a depth below its own and the depths below the batch's lowest do not run at all. What differs is how: the
fast path hooks and replaces the forwards of the blocks below the start, but here one module serves every depth,
so its hooks and forward are every depth's. Instead the shared block gets one instance ``forward`` that asks, at
each call, which depth it is running (:func:`kneuron.models.hooks.at_depth`): below the batch's lowest depth it
passes its input through, at that depth it reads the clean inputs of the rows starting there, and at each later
depth with rows of its own it appends theirs. The FFN scalers act at their own depth only (``on_ffn_input``).

Not done here (the fast path's two further savings): a single prompt's lowest depth is not run once and branched
at the FFN, and a masked model's last FFN is not narrowed to the answer positions.

Only masked models have shared layers among the built-in families; a causal one (a spec of your own) is refused:
its rows would read a key/value cache, which one attention module shared by every depth does not keep per depth.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch

from kneuron.attribution.step_rows import (
    Objective,
    Plan,
    Row,
    _answer_log_probs,
    _by_prompt,
    _forward_logits,
    _hidden_from,
    _replace_hidden,
    lay_out,
    objective_of,
)
from kneuron.errors import KneuronError
from kneuron.models.hooks import at_depth, on_ffn_input
from kneuron.models.language_model import LanguageModel

_ABSENT = object()


def check_shared_layers_supported(lm: LanguageModel) -> None:
    """KneuronError for a causal model with shared layers (before any pass reads its key/value cache)."""
    if lm.shared_layers and lm.kind != "mlm":
        raise KneuronError(
            f"{lm.name} is a causal model with shared layers: kneuron's integrated gradients supports shared layers "
            "in masked models only (ALBERT); use the 'gxa' estimator, which needs no key/value cache.")


@contextmanager
def rows_join_at_their_depth(lm: LanguageModel, joining: dict[int, torch.Tensor]) -> Iterator[None]:
    """Depths below ``min(joining)`` pass their input through untouched; depth ``min(joining)`` reads
    ``joining[min(joining)]`` instead of its input, and every later depth ``d`` in ``joining`` appends the rows
    ``joining[d]`` (clean inputs to depth ``d``) after the rows already running.

    Each block gets an instance ``forward``; the exact previous instance attribute (e.g. accelerate's wrapper)
    is called through and put back on exit, also after an exception, and an absent one stays absent.
    """
    start = min(joining)
    blocks = {id(lm.block(d)): lm.block(d) for d in range(lm.n_layers)}
    saved = [(block, block.__dict__.get("forward", _ABSENT)) for block in blocks.values()]

    def make(block, previous, depths):
        def forward(*args, **kwargs):
            depth = next(d for d, current in depths if current())
            if depth < start:
                return _hidden_from(args, kwargs)
            if depth == start:
                args, kwargs = _replace_hidden(args, kwargs, joining[start])
            elif depth in joining:
                args, kwargs = _replace_hidden(args, kwargs, torch.cat([_hidden_from(args, kwargs), joining[depth]]))
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


def run_shared_rows(lm: LanguageModel, plans: Sequence[Plan], chunk: list[Row], objective: Objective,
                    gradients: bool = True) -> tuple[list[torch.Tensor], list[float]]:
    """One batch of rows (prompts of one :func:`~kneuron.attribution.step_rows.shape_key`), each joining at its
    own depth; returns what :func:`~kneuron.attribution.step_rows.run_rows` returns: per-row gradients with
    respect to the scaled activations (empty without ``gradients``) and per-row objectives, in ``chunk``'s order."""
    check_shared_layers_supported(lm)
    device = lm.device
    layout = lay_out(lm, plans, chunk, gradients)  # batch rows by depth (the order in which they join), then prompt
    layers, prompts_of, leaves, every = layout.layers, layout.prompts_of, layout.leaves, layout.every
    targets = _by_prompt({p: plans[p].targets[None] for p in every}, every)
    answers = _by_prompt({p: plans[p].answer_ids[None] for p in every}, every)

    def scaler(layer: int):
        rows = layout.rows_of(layer)
        positions = torch.tensor([plans[p].position for p in prompts_of[layer]], device=device)

        def scale(x: torch.Tensor) -> torch.Tensor:
            out = x.clone()
            out[rows, positions] = leaves[layer].to(x.dtype)
            return out
        return scale

    with torch.set_grad_enabled(gradients), ExitStack() as stack:
        joining = {layer: _by_prompt({p: plans[p].block_inputs[layer] for p in prompts_of[layer]}, prompts_of[layer])
                   for layer in layers}
        stack.enter_context(rows_join_at_their_depth(lm, joining))
        for layer in layers:
            stack.enter_context(on_ffn_input(lm, layer, scaler(layer)))
        logits = _forward_logits(lm, plans[every[0]].input_ids[None], targets, None)
        log_p = _answer_log_probs(logits, answers).sum(-1)
        # as run_rows: the objective in float64 from log P, gradients in log space (dP/da = P · dlogP/da)
        values = objective_of(log_p.detach().double()[:, None], objective)
        grads = torch.autograd.grad(log_p.sum(), [leaves[layer] for layer in layers]) if gradients else ()
    return layout.in_chunk_order(values, grads, objective)
