"""The primitives edits are made of: reading and writing value slots, comparing bits, the error type.

A value slot is column ``i`` of an ``nn.Linear`` output projection's weight (layout "linear") or row ``i`` of
GPT-2's ``Conv1D`` weight (layout "conv1d").
"""

from __future__ import annotations

import torch

LAYOUTS = ("linear", "conv1d")


def read_slots(weight: torch.Tensor, layout: str, indices: torch.Tensor) -> torch.Tensor:
    """A copy of the slots ``indices`` of ``weight``, as rows: (len(indices), hidden)."""
    return weight[:, indices].T.clone() if layout == "linear" else weight[indices, :].clone()


def write_slots(weight: torch.Tensor, layout: str, indices: torch.Tensor, values: torch.Tensor) -> None:
    """Write ``values`` (rows, one per index) into the slots ``indices`` of ``weight``, in place."""
    if layout == "linear":
        weight[:, indices] = values.T.to(weight.dtype)
    else:
        weight[indices, :] = values.to(weight.dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold the same bits (NaN equals the same NaN; 0.0 differs from -0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def slot_index(group, weight: torch.Tensor) -> torch.Tensor:
    return torch.tensor(group.indices, dtype=torch.long, device=weight.device)


def slot_names(slots: set[tuple[int, int]]) -> str:
    return ", ".join(f"L{layer}.N{index}" for layer, index in sorted(slots))
