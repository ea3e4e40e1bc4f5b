"""Integrated-gradients rows for a model with shared layers (ALBERT), where one block runs at every depth.

The rows are those of :mod:`kneuron.attribution.step_rows`: a row scales one depth's activations at one prompt's
answer position by one α, and joins the batch at its own depth with that prompt's clean input to it, so no row
runs a depth below its own and the depths below the batch's lowest do not run at all. What differs is how: the
fast path hooks and replaces the forwards of the blocks below the start, but here one module serves every depth,
so its hooks and forward are every depth's. Instead the shared block gets one instance ``forward`` that asks, at
each call, which depth it is running (:func:`kneuron.models.partial_forward.rows_join_at_their_depth`): below the
batch's lowest depth it passes its input through, at that depth it reads the clean inputs of the rows starting
there, and at each later depth with rows of its own it appends theirs. The FFN scalers act at their own depth
only (``on_ffn_input``).

Not done here (the fast path's two further savings): a single prompt's lowest depth is not run once and branched
at the FFN, and a masked model's last FFN is not narrowed to the answer positions.

Only masked models have shared layers among the built-in families; a causal one (a spec of your own) is refused:
its rows would read a key/value cache, which one attention module shared by every depth does not keep per depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack

import torch

from kneuron.attribution.objective import Objective, answer_token_log_probs, objective_of
from kneuron.attribution.step_rows import Plan, Row, by_prompt, lay_out
from kneuron.errors import KneuronError
from kneuron.models.hooks import on_ffn_input
from kneuron.models.language_model import LanguageModel
from kneuron.models.partial_forward import forward_logits, rows_join_at_their_depth


def check_shared_layers_supported(lm: LanguageModel) -> None:
    """KneuronError for a causal model with shared layers (before any pass reads its key/value cache)."""
    if lm.shared_layers and lm.kind != "mlm":
        raise KneuronError(
            f"{lm.name} is a causal model with shared layers: kneuron's integrated gradients supports shared layers "
            "in masked models only (ALBERT); use the 'gxa' estimator, which needs no key/value cache.")


def run_shared_rows(lm: LanguageModel, plans: Sequence[Plan], chunk: list[Row], objective: Objective,
                    gradients: bool = True) -> tuple[list[torch.Tensor], list[float]]:
    """One batch of rows (prompts of one :func:`~kneuron.attribution.step_rows.shape_key`), each joining at its
    own depth; returns what :func:`~kneuron.attribution.step_rows.run_rows` returns: per-row gradients with
    respect to the scaled activations (empty without ``gradients``) and per-row objectives, in ``chunk``'s order."""
    check_shared_layers_supported(lm)
    device = lm.device
    layout = lay_out(lm, plans, chunk, gradients)  # batch rows by depth (the order in which they join), then prompt
    layers, prompts_of, leaves, every = layout.layers, layout.prompts_of, layout.leaves, layout.every
    targets = by_prompt({p: plans[p].targets[None] for p in every}, every)
    answers = by_prompt({p: plans[p].answer_ids[None] for p in every}, every)

    def scaler(layer: int):
        rows = layout.rows_of(layer)
        positions = torch.tensor([plans[p].position for p in prompts_of[layer]], device=device)

        def scale(x: torch.Tensor) -> torch.Tensor:
            out = x.clone()
            out[rows, positions] = leaves[layer].to(x.dtype)
            return out
        return scale

    with torch.set_grad_enabled(gradients), ExitStack() as stack:
        joining = {layer: by_prompt({p: plans[p].block_inputs[layer] for p in prompts_of[layer]}, prompts_of[layer])
                   for layer in layers}
        stack.enter_context(rows_join_at_their_depth(lm, joining))
        for layer in layers:
            stack.enter_context(on_ffn_input(lm, layer, scaler(layer)))
        logits = forward_logits(lm, plans[every[0]].input_ids[None], targets, None)
        log_p = answer_token_log_probs(logits, answers).sum(-1)
        # as run_rows: the objective in float64 from log P, gradients in log space (dP/da = P · dlogP/da)
        values = objective_of(log_p.detach().double()[:, None], objective)
        grads = torch.autograd.grad(log_p.sum(), [leaves[layer] for layer in layers]) if gradients else ()
    return layout.in_chunk_order(values, grads, objective)
