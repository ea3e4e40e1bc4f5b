"""The lower bounds the benchmarks quote: FLOPs exact attribution cannot avoid, and the matrix-multiply rate.

Shared by ``bench_attribution.py`` (CPU, against EleutherAI) and ``bench_device.py`` (a GPU); the count of
:func:`ig_flops` is written out in ``bench_attribution.py``'s docstring ("The lower bound"). ``gxa_flops`` is the
same count for gradient x activation: one clean pass over every position and its input-backward (counted as
equal to the forward), the blocks' weights and attention plus the output head at the answer positions.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kneuron.facts.encoding import EncodedQuery
from kneuron.models import LanguageModel


def matmul_rate(dtype: torch.dtype, n: int = 2048, repeats: int = 3, device: str | torch.device = "cpu") -> float:
    """FLOP/s of an n x n matrix product in ``dtype`` on ``device`` (best of ``repeats``; CUDA synchronised)."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.matmul(a, b)
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _matmul_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Linear, Conv1D)))


def _shape(lm: LanguageModel, query: EncodedQuery) -> tuple[list[int], list[int], int, int, int, int]:
    layers = lm.n_layers
    in_blocks = {id(m) for layer in range(layers) for m in lm.block(layer).modules()}
    head = sum(m.weight.numel() for m in lm.model.modules()
               if isinstance(m, (nn.Linear, Conv1D)) and id(m) not in in_blocks)
    weights = [_matmul_weights(lm.block(layer)) for layer in range(layers)]
    down = [lm.ffn_out(layer).weight.numel() for layer in range(layers)]
    return weights, down, head, len(query), len(query.answer_ids), lm.model.config.hidden_size


def ig_flops(lm: LanguageModel, query: EncodedQuery, steps: int) -> float:
    """The FLOPs exact integrated gradients cannot avoid for ``query`` (see ``bench_attribution.py``)."""
    weights, down, head, seq, answers, hidden = _shape(lm, query)
    layers = lm.n_layers
    changed = answers if lm.kind == "causal" else seq

    def block(layer: int, positions: int) -> float:
        return 2 * weights[layer] * positions + 4 * positions * seq * hidden

    clean = sum(block(layer, seq) for layer in range(layers)) + 2 * head * answers
    rows = sum(2 * (2 * down[layer] + sum(block(k, changed) for k in range(layer + 1, layers)) + 2 * head * answers)
               for layer in range(layers))
    return clean + steps * rows


def gxa_flops(lm: LanguageModel, query: EncodedQuery) -> float:
    """The FLOPs of gradient x activation for ``query``: one forward pass and its input-backward."""
    weights, _down, head, seq, answers, hidden = _shape(lm, query)
    forward = sum(2 * w * seq + 4 * seq * seq * hidden for w in weights) + 2 * head * answers
    return 2 * forward


#: the name bench_attribution.py has always used
lower_bound_flops = ig_flops
