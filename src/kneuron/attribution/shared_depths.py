"""Integrated-gradients rows for a model with shared layers (ALBERT), where one block runs at every depth.

The fast path of :mod:`kneuron.attribution.step_rows` makes a row join the batch at its own layer's block and
skips the blocks below the batch's lowest layer, by hooking and replacing those blocks' forwards. When one module
serves every depth, a block's hook or forward is every depth's, so none of that applies. Here each row is instead
a full forward pass of its prompt in which only the activations of its own depth, at the answer position, are
replaced by α times their clean values (:func:`kneuron.models.hooks.on_ffn_input` acts at one depth only): the
naive definition itself, with the rows of several depths, α and prompts (of one shape) batched up to the memory
budget and every row's gradient from one backward pass. The output head still computes the answer positions only.

Only masked models have shared layers among the built-in families; a causal one (a spec of your own) is refused:
its rows would read a key/value cache, which one attention module shared by every depth does not keep per depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack

import torch

from kneuron.attribution.step_rows import (
    Objective,
    Plan,
    Row,
    _answer_log_probs,
    _forward_logits,
    objective_of,
)
from kneuron.errors import KneuronError
from kneuron.models.hooks import on_ffn_input
from kneuron.models.language_model import LanguageModel


def check_shared_layers_supported(lm: LanguageModel) -> None:
    """KneuronError for a causal model with shared layers (before any pass reads its key/value cache)."""
    if lm.shared_layers and lm.kind != "mlm":
        raise KneuronError(
            f"{lm.name} is a causal model with shared layers: kneuron's integrated gradients supports shared layers "
            "in masked models only (ALBERT); use the 'gxa' estimator, which needs no key/value cache.")


def run_shared_rows(lm: LanguageModel, plans: Sequence[Plan], chunk: list[Row], objective: Objective,
                    gradients: bool = True) -> tuple[list[torch.Tensor], list[float]]:
    """One batch of rows (prompts of one :func:`~kneuron.attribution.step_rows.shape_key`), each a full forward
    of its prompt with its depth scaled; returns what :func:`~kneuron.attribution.step_rows.run_rows` returns:
    per-row gradients with respect to the scaled activations (empty without ``gradients``) and per-row
    objectives, in ``chunk``'s order."""
    check_shared_layers_supported(lm)
    device, dtype = lm.device, plans[chunk[0][0]].activations.dtype
    prompts = [row[0] for row in chunk]
    ids = torch.stack([plans[p].input_ids for p in prompts])
    targets = torch.stack([plans[p].targets for p in prompts])
    answers = torch.stack([plans[p].answer_ids for p in prompts])
    layers = sorted({row[1] for row in chunk})
    members = {layer: [i for i, row in enumerate(chunk) if row[1] == layer] for layer in layers}
    leaves: dict[int, torch.Tensor] = {}
    for layer in layers:
        alphas = torch.tensor([chunk[i][2] for i in members[layer]], dtype=dtype, device=device)
        clean = torch.stack([plans[chunk[i][0]].activations[layer] for i in members[layer]])
        leaves[layer] = (alphas[:, None] * clean).requires_grad_(gradients)

    def scaler(layer: int):
        rows = torch.tensor(members[layer], device=device)
        positions = torch.tensor([plans[chunk[i][0]].position for i in members[layer]], device=device)

        def scale(x: torch.Tensor) -> torch.Tensor:
            out = x.clone()
            out[rows, positions] = leaves[layer].to(x.dtype)
            return out
        return scale

    with torch.set_grad_enabled(gradients), ExitStack() as stack:
        for layer in layers:
            stack.enter_context(on_ffn_input(lm, layer, scaler(layer)))
        logits = _forward_logits(lm, ids, targets, None)
        log_p = _answer_log_probs(logits, answers).sum(-1)
        # as run_rows: the objective in float64 from log P, gradients in log space (dP/da = P · dlogP/da)
        values = objective_of(log_p.detach().double()[:, None], objective)
        grads = torch.autograd.grad(log_p.sum(), [leaves[layer] for layer in layers]) if gradients else ()
    per_row: list[torch.Tensor] = [torch.empty(0)] * len(chunk)
    for layer, grad in zip(layers if gradients else [], grads, strict=True):
        for j, row in enumerate(members[layer]):
            row_grad = grad[j].detach().double()
            per_row[row] = row_grad * values[row] if objective == "prob" else row_grad
    return per_row, values.tolist()
