"""The float32 lower bound of exact integrated gradients: the FLOPs it cannot avoid and this machine's matmul rate.

Shared by ``bench_attribution.py`` (whose docstring derives the count) and ``bench_gemma.py``; kept apart so that
a benchmark that does not compare against EleutherAI's knowledge-neurons need not install it.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kneuron.facts.encoding import EncodedQuery
from kneuron.models import LanguageModel


def matmul_rate(dtype: torch.dtype, n: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of an n x n matrix product in ``dtype`` (best of ``repeats``)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _matmul_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Linear, Conv1D)))


def lower_bound_flops(lm: LanguageModel, query: EncodedQuery, steps: int) -> float:
    """The FLOPs exact integrated gradients cannot avoid for ``query`` (see the module docstring)."""
    layers = lm.n_layers
    seq, answers = len(query), len(query.answer_ids)
    hidden = lm.model.config.hidden_size
    in_blocks = {id(m) for layer in range(layers) for m in lm.block(layer).modules()}
    head = sum(m.weight.numel() for m in lm.model.modules()
               if isinstance(m, (nn.Linear, Conv1D)) and id(m) not in in_blocks)
    weights = [_matmul_weights(lm.block(layer)) for layer in range(layers)]
    down = [lm.ffn_out(layer).weight.numel() for layer in range(layers)]
    changed = answers if lm.kind == "causal" else seq

    def block(layer: int, positions: int) -> float:
        return 2 * weights[layer] * positions + 4 * positions * seq * hidden

    clean = sum(block(layer, seq) for layer in range(layers)) + 2 * head * answers
    rows = sum(2 * (2 * down[layer] + sum(block(k, changed) for k in range(layer + 1, layers)) + 2 * head * answers)
               for layer in range(layers))
    return clean + steps * rows
