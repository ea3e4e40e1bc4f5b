"""GGUF block types that the installed ``transformers`` cannot de-quantize, added while kneuron loads a file.

transformers 5.24 reads GGUF files with its own de-quantizers (``transformers.integrations.gguf.dequant``), which
lack the legacy 5-bit types Q5_0 and Q5_1. Gemma 3 270M's Q4_K_M file stores 81 of its tensors as Q5_0, so
without them it does not load at all. :func:`extra_gguf_types` registers kneuron's own de-quantizers for the
types that transformers lacks, for the duration of a ``with`` block, and removes exactly those entries on exit
(also after an exception): transformers' tables are as they were before, and a type transformers itself supports
is never replaced.

The block layouts are ggml's (``ggml-common.h``): 32 values per block,

* Q5_0: ``half d; uint8 qh[4]; uint8 qs[16]`` (22 bytes), value = d · (q − 16);
* Q5_1: ``half d; half m; uint8 qh[4]; uint8 qs[16]`` (24 bytes), value = d · q + m;

where q is a 5-bit number: its low four bits are a nibble of ``qs`` (value j < 16 the low nibble of byte j,
value j + 16 its high nibble) and its fifth bit is bit j of the little-endian 32-bit ``qh``. The test-suite checks
both against the ``gguf`` package's own numpy de-quantizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

GGML_Q5_0, GGML_Q5_1 = 6, 7

_BLOCK_VALUES = 32


def _half_at(blocks: torch.Tensor, start: int, dtype: torch.dtype) -> torch.Tensor:
    """One float16 per block at byte ``start``, as a (blocks, 1) column of ``dtype``."""
    return blocks[:, start:start + 2].contiguous().view(torch.float16).to(dtype)


def _five_bit_values(blocks: torch.Tensor, qh_at: int) -> torch.Tensor:
    """The 32 unsigned 5-bit numbers of each block, (blocks, 32) int32, in value order."""
    qh = blocks[:, qh_at:qh_at + 4].to(torch.int64)
    high_bits = qh[:, 0] | (qh[:, 1] << 8) | (qh[:, 2] << 16) | (qh[:, 3] << 24)
    fifth = (high_bits[:, None] >> torch.arange(_BLOCK_VALUES, device=blocks.device)) & 1
    qs = blocks[:, qh_at + 4:qh_at + 20].to(torch.int64)
    low = torch.cat([qs & 0x0F, qs >> 4], dim=1)
    return (low | (fifth << 4)).to(torch.int32)


def dequantize_q5_0(blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(blocks, 22) uint8 → (blocks, 32) values of ``dtype``."""
    return _half_at(blocks, 0, dtype) * (_five_bit_values(blocks, 2) - 16).to(dtype)


def dequantize_q5_1(blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(blocks, 24) uint8 → (blocks, 32) values of ``dtype``."""
    return _half_at(blocks, 0, dtype) * _five_bit_values(blocks, 4).to(dtype) + _half_at(blocks, 2, dtype)


#: ggml type id → (name, (values per block, bytes per block), de-quantizer)
EXTRA_TYPES: dict[int, tuple[str, tuple[int, int], Callable[[torch.Tensor, torch.dtype], torch.Tensor]]] = {
    GGML_Q5_0: ("Q5_0", (_BLOCK_VALUES, 22), dequantize_q5_0),
    GGML_Q5_1: ("Q5_1", (_BLOCK_VALUES, 24), dequantize_q5_1),
}


@contextmanager
def extra_gguf_types() -> Iterator[list[str]]:
    """Within the block, transformers' GGUF reader also de-quantizes the :data:`EXTRA_TYPES` it lacks; yields the
    names added (none with a transformers that has them all, or one without this reader)."""
    try:
        from transformers.integrations.gguf import dequant
    except ImportError:  # another transformers layout: it de-quantizes through the gguf package
        yield []
        return
    tables = (getattr(dequant, "GGML_BLOCK", None), getattr(dequant, "GGML_NAME", None),
              getattr(dequant, "_DEQUANT", None))
    if not all(isinstance(table, dict) for table in tables):
        yield []
        return
    blocks, names, functions = tables
    added = [type_id for type_id in EXTRA_TYPES if type_id not in blocks and type_id not in functions]
    try:
        for type_id in added:
            name, layout, function = EXTRA_TYPES[type_id]
            blocks[type_id], names[type_id], functions[type_id] = layout, name, function
        yield [EXTRA_TYPES[type_id][0] for type_id in added]
    finally:
        for type_id in added:
            blocks.pop(type_id, None)
            names.pop(type_id, None)
            functions.pop(type_id, None)
