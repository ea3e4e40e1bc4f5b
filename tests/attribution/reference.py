"""A slow, obviously-correct integrated gradients: one full forward and backward per (layer, step).

For a model with shared layers (ALBERT: one output projection runs at every depth) the reference finds its
depth by itself: each context below wraps exactly one forward pass, in which depth l is call number
#{d < l : ffn_out(d) is ffn_out(l)} of that module; it does not use kneuron's depth counting (hooks.at_depth).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

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


def post_ffn_norm(lm: LanguageModel, layer: int) -> torch.nn.Module:
    """The RMSNorm Gemma 2/3 and OLMo 2 blocks apply to the FFN output (written out here, not from the spec)."""
    return lm.block(layer).post_feedforward_layernorm


def _gain(lm: LanguageModel, norm: torch.nn.Module) -> torch.Tensor:
    """Gemma's RMSNorm multiplies by 1 + weight, OLMo 2's by weight."""
    model_type = lm.model.config.model_type
    return (1.0 + norm.weight) if model_type.startswith("gemma") else norm.weight


@contextmanager
def held_norm(lm: LanguageModel, layer: int, position: int, scale: float):
    """``layer``'s post-FFN norm output at ``position`` of row 0 is its input · ``scale`` · gain (the frozen norm)."""
    norm = post_ffn_norm(lm, layer)

    def hook(_module, args, out):
        replaced = out.clone()
        replaced[0, position] = args[0][0, position] * scale * _gain(lm, norm).to(out.dtype)
        return replaced

    handle = norm.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def at_one_depth(lm: LanguageModel, layer: int, fn: Callable[[torch.Tensor], torch.Tensor | None],
                 ) -> Iterator[None]:
    """``fn`` on layer ``layer``'s FFN activations in the one forward pass the body runs."""
    module = lm.ffn_out(layer)
    if not any(lm.ffn_out(d) is module for d in range(lm.n_layers) if d != layer):
        with on_ffn_input(lm, layer, fn):
            yield
        return
    mine = sum(lm.ffn_out(d) is module for d in range(layer))
    calls = [0]

    def pre_hook(_module, args):
        calls[0] += 1
        if calls[0] - 1 != mine:
            return None
        out = fn(args[0])
        return None if out is None else (out, *args[1:])

    handle = module.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


def clean_norm_scales(lm: LanguageModel, query: EncodedQuery) -> list[float]:
    """Each layer's post-FFN norm factor 1 / sqrt(mean(x²) + eps) at the answer position, from a clean pass."""
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for layer in range(lm.n_layers):
        def record(_module, args, layer=layer):
            seen[layer] = args[0][0, query.position].detach().double()
        handles.append(post_ffn_norm(lm, layer).register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            lm.model(input_ids=query.input_ids[None])
    finally:
        for handle in handles:
            handle.remove()
    return [float(1.0 / torch.sqrt(seen[layer].pow(2).mean() + _eps(post_ffn_norm(lm, layer))))
            for layer in range(lm.n_layers)]


def _eps(norm: torch.nn.Module) -> float:
    return float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 0.0)))


def _clean_activations(lm: LanguageModel, query: EncodedQuery, objective: str) -> tuple[dict, torch.Tensor]:
    if not lm.shared_layers:
        with torch.no_grad(), capture(lm, positions=[query.position]) as acts:
            clean = _objective(lm, query, objective)
        return acts, clean
    acts: dict[int, torch.Tensor] = {}
    with torch.no_grad(), ExitStack() as stack:
        for layer in range(lm.n_layers):
            def record(x: torch.Tensor, layer: int = layer) -> None:
                acts[layer] = x[:, [query.position]].detach().clone()
            stack.enter_context(at_one_depth(lm, layer, record))
        clean = _objective(lm, query, objective)
    return acts, clean


def naive_integrated_gradients(lm: LanguageModel, query: EncodedQuery, steps: int = 20, objective: str = "prob",
                               alphas: str = "right", log_space: bool = False, frozen_norm: bool = False,
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores, P(alpha=1), P(alpha=0) per layer) with the paper's definition, computed the slow way.

    With ``log_space`` (objective "prob" only) each step's gradient is taken by the chain rule by hand,
    dP/da = P · dlogP/da with P in float64: a tiny P's own gradient underflows where a model computes in
    float32 even in a float64 model (Llama's RMSNorm casts to float32, also in its backward).
    With ``frozen_norm`` (Gemma 2/3, OLMo 2) the scaled layer's post-FFN norm keeps its clean 1/RMS factor at
    the answer position.
    """
    position = query.position
    acts, clean = _clean_activations(lm, query, objective)
    scales = clean_norm_scales(lm, query) if frozen_norm else None
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

            with ExitStack() as stack:
                stack.enter_context(at_one_depth(lm, layer, set_leaf))
                if scales is not None:
                    stack.enter_context(held_norm(lm, layer, position, scales[layer]))
                if log_space and objective == "prob":
                    log_p = _objective(lm, query, "logprob")
                    total += log_p.detach().double().exp() * torch.autograd.grad(log_p, leaf)[0].double()
                    continue
                value = _objective(lm, query, objective)
            total += torch.autograd.grad(value, leaf)[0]
        scores.append(w_bar * total / steps)
        zero = torch.zeros_like(w_bar)
        with torch.no_grad(), at_one_depth(lm, layer, lambda x, zero=zero: set_leaf(x, zero)):
            baselines.append(_objective(lm, query, objective))
    return torch.stack(scores), clean, torch.stack(baselines)
