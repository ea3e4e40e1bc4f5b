"""A slow, obviously-correct integrated gradients: one full forward and backward per (layer, step)."""

from __future__ import annotations

import torch

from kneuron.attribution.integrated_gradients import alpha_points, objective_of
from kneuron.facts.encoding import EncodedQuery
from kneuron.models.hooks import capture, on_ffn_input
from kneuron.models.language_model import LanguageModel


def _objective(lm: LanguageModel, query: EncodedQuery, objective: str) -> torch.Tensor:
    logits = lm.model(input_ids=query.input_ids[None]).logits[0]
    log_probs = torch.log_softmax(logits[list(query.target_positions)], dim=-1)
    picked = log_probs[torch.arange(len(query.answer_ids)), torch.tensor(query.answer_ids)]
    return objective_of(picked[None], objective)[0]


def naive_integrated_gradients(lm: LanguageModel, query: EncodedQuery, steps: int = 20, objective: str = "prob",
                               alphas: str = "right", log_space: bool = False,
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores, P(alpha=1), P(alpha=0) per layer) with the paper's definition, computed the slow way.

    With ``log_space`` (objective "prob" only) each step's gradient is taken by the chain rule by hand,
    dP/da = P · dlogP/da with P in float64: a tiny P's own gradient underflows where a model computes in
    float32 even in a float64 model (Llama's RMSNorm casts to float32, also in its backward).
    """
    position = query.position
    with torch.no_grad(), capture(lm, positions=[position]) as acts:
        clean = _objective(lm, query, objective)
    scores, baselines = [], []
    for layer in range(lm.n_layers):
        w_bar = acts[layer][0, 0]
        total = torch.zeros_like(w_bar)
        for alpha in alpha_points(steps, alphas).tolist():
            leaf = (alpha * w_bar).clone().requires_grad_(True)

            def set_leaf(x: torch.Tensor, leaf: torch.Tensor = leaf) -> torch.Tensor:
                out = x.clone()
                out[0, position] = leaf
                return out

            if log_space and objective == "prob":
                with on_ffn_input(lm, layer, set_leaf):
                    log_p = _objective(lm, query, "logprob")
                total += log_p.detach().double().exp() * torch.autograd.grad(log_p, leaf)[0].double()
                continue
            with on_ffn_input(lm, layer, set_leaf):
                value = _objective(lm, query, objective)
            total += torch.autograd.grad(value, leaf)[0]
        scores.append(w_bar * total / steps)
        zero = torch.zeros_like(w_bar)
        with torch.no_grad(), on_ffn_input(lm, layer, lambda x, zero=zero: set_leaf(x, zero)):
            baselines.append(_objective(lm, query, objective))
    return torch.stack(scores), clean, torch.stack(baselines)
