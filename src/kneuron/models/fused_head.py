"""The answer's log-probability straight from the output head's input, without materialising the logits.

Integrated gradients needs, per row, log softmax(W h + b)[y] and its gradient with respect to h, where W is the
(vocabulary × hidden) output head. Taken through the model's own head and ``log_softmax``, a batch of n rows
materialises (n, vocabulary) logits, their log-softmax, a zero-filled gradient of the same size and the
softmax's backward: on Gemma 3 (262,144 tokens) and 360 rows, four passes over 377 MB tensors, about 15% of the
time of a prompt (profiled). The floating-point work that cannot be avoided is two head-sized products per row:

* forward, the normaliser logsumexp(W h + b) needs every logit: n × V × d multiply-adds;
* backward, d logsumexp / dh = Wᵀ softmax(W h + b): another n × V × d (the numerator's W[y] is one row).

:func:`answer_log_probs` does exactly those two products, vocabulary chunk by chunk, with an online (rescaled)
logsumexp as in flash attention: per chunk c it computes z = h W_cᵀ + b_c, updates the running maximum m and
sum s of exp(z − m), and accumulates exp(z − m) W_c into the gradient's numerator g (both rescaled by
exp(m_old − m_new) when the maximum grows), so each chunk's logits are used once while in cache and never kept.
Then log p = z_y − (m + log s) and d log p / dh = W[y] − g / s, computed as (1 − p_y) W[y] − g_{≠y} / s with
the answer's own term left out of g and of 1 − p_y = s_{≠y} / s (as the log-softmax backward's one-hot − softmax
does; W[y] − g / s would cancel digits when p_y is near 1). It is the same value and gradient as the model's head
and ``log_softmax`` up to the order of float additions.

:func:`answer_log_probs_head` swaps it into a model for a forward pass (the head's instance ``forward``, put back
exactly on exit, also after an exception); :func:`fusable_head` says when that is allowed: a plain ``nn.Linear``
head in float32 or float64 with no hooks or instance forward of its own, on a model that returns the head's
output unchanged as its logits (checked on the clean pass: Gemma 2's logit soft-capping, Cohere's logit scale
and Granite's logit divisor all fail it, and keep the model's own head).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from kneuron.models.hooks import forward_hook
from kneuron.models.language_model import LanguageModel

#: vocabulary entries per chunk: (rows × CHUNK) float32 logits stay a few MB (measured on this machine, one
#: thread, 360 rows of Gemma 3: 2,048 to 32,768 all within noise of each other and of one unchunked product)
CHUNK = 8192
_ABSENT = object()


class _AnswerLogProb(torch.autograd.Function):
    """(n,) log softmax(x Wᵀ + b)[answers] of (n, d) ``x``; its gradient is computed in the forward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # type: ignore[override]
                answers: torch.Tensor, chunk: int) -> torch.Tensor:
        gradient = ctx.needs_input_grad[0]
        rows = x.shape[0]
        every = torch.arange(rows, device=x.device)
        peak = x.new_full((rows,), -torch.inf)
        other = x.new_zeros(rows)  # sum of exp(z - peak) over the tokens other than each row's answer
        answer_e = x.new_zeros(rows)  # exp(z_answer - peak)
        answer_z = x.new_zeros(rows)
        numerator = x.new_zeros(rows, x.shape[1]) if gradient else None  # sum over the other tokens of e_v W_v
        for start in range(0, weight.shape[0], chunk):
            w = weight[start:start + chunk]
            z = x @ w.T if bias is None else torch.addmm(bias[start:start + chunk], x, w.T)
            new_peak = torch.maximum(peak, z.amax(-1))
            rescale = torch.exp(peak - new_peak)
            e = torch.exp(z - new_peak[:, None])
            local = answers - start
            inside = every[(local >= 0) & (local < w.shape[0])]
            answer_e = answer_e * rescale
            answer_z[inside] = z[inside, local[inside]]
            answer_e[inside] = e[inside, local[inside]]
            e[inside, local[inside]] = 0.0
            other = other * rescale + e.sum(-1)
            if numerator is not None:
                numerator = torch.addmm(numerator * rescale[:, None], e, w)
            peak = new_peak
        total = other + answer_e
        if numerator is not None:
            # d log p / dh = W[y] - sum_v p_v W_v = (1 - p_y) W[y] - sum_{v != y} p_v W_v, with 1 - p_y = other / total
            # summed over the other tokens: no cancellation when p_y is near 1 (W[y] - g / s would lose digits)
            ctx.save_for_backward((other / total)[:, None] * weight[answers] - numerator / total[:, None])
        return answer_z - (peak + torch.log(total))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (d_x,) = ctx.saved_tensors
        return grad_out[:, None] * d_x, None, None, None, None


def answer_log_probs(x: torch.Tensor, head: nn.Linear, answers: torch.Tensor, chunk: int | None = None,
                     ) -> torch.Tensor:
    """log softmax(head(x))[answers] for (..., d) ``x`` and integer ``answers`` of shape (...), differentiable in
    ``x`` (not in the head's weights), without materialising the (..., vocabulary) logits; ``chunk`` vocabulary
    entries at a time (default :data:`CHUNK`)."""
    flat = x.reshape(-1, x.shape[-1])
    out = _AnswerLogProb.apply(flat, head.weight, head.bias, answers.reshape(-1).to(x.device), chunk or CHUNK)
    return out.reshape(answers.shape)


def output_head(lm: LanguageModel) -> nn.Module | None:
    """The model's vocabulary projection (``get_output_embeddings()``), or None when it has none."""
    return lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None


def fusable_head(lm: LanguageModel) -> bool:
    """Whether the head itself allows :func:`answer_log_probs_head`: a plain ``nn.Linear`` in float32 or float64
    whose weights need no gradient (inside ``frozen_parameters``: the fused product gives none), with no hooks
    and no instance ``forward`` (e.g. accelerate's) of its own. Whether the model returns the
    head's output unchanged is the caller's to check (:func:`recording_head_output`)."""
    head = output_head(lm)
    return (type(head) is nn.Linear and head.weight.dtype in (torch.float32, torch.float64)
            and not head.weight.requires_grad and (head.bias is None or not head.bias.requires_grad)
            and "forward" not in head.__dict__ and not head._forward_hooks and not head._forward_pre_hooks)


@contextmanager
def recording_head_output(lm: LanguageModel, store: list[torch.Tensor]) -> Iterator[None]:
    """Append each output of the head to ``store`` (to check that the model returns it as its logits)."""
    head = output_head(lm)
    if head is None:
        yield
        return
    with forward_hook(head, lambda _module, _args, out: store.append(out)):
        yield


@contextmanager
def answer_log_probs_head(lm: LanguageModel, select, answers: torch.Tensor) -> Iterator[None]:
    """For the duration, the head returns (rows, answer tokens, 1): each row's log-probability of ``answers``
    ((rows or 1, answer tokens)) at the positions ``select(x)`` picks from its (rows, seq, d) input (the model
    must return the head's output unchanged: :func:`fusable_head`). The exact previous instance ``forward``
    attribute (none, by :func:`fusable_head`) is put back on exit, also after an exception."""
    head = output_head(lm)
    assert isinstance(head, nn.Linear)
    previous = head.__dict__.get("forward", _ABSENT)

    def forward(x: torch.Tensor) -> torch.Tensor:
        picked = select(x)
        return answer_log_probs(picked, head, answers.expand(picked.shape[0], -1))[..., None]

    head.__dict__["forward"] = forward
    try:
        yield
    finally:
        if previous is _ABSENT:
            head.__dict__.pop("forward", None)
        else:
            head.__dict__["forward"] = previous


__all__ = ["CHUNK", "answer_log_probs", "answer_log_probs_head", "fusable_head", "output_head",
           "recording_head_output"]
