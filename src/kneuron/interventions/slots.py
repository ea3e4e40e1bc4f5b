"""The primitives edits are made of: value slots (reading, writing, comparing bits) and :class:`SlotGroup`, the
slots an edit touches in one layer.

A value slot is column ``i`` of an ``nn.Linear`` output projection's weight (layout "linear") or row ``i`` of
GPT-2's ``Conv1D`` weight (layout "conv1d"). This module is the bottom of :mod:`kneuron.interventions`: the edit
file format (:mod:`.edit_format`), the live-edit registry (:mod:`.live`) and :class:`~.edits.Edit` build on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kneuron.errors import EditError
from kneuron.models.language_model import LanguageModel

LAYOUTS = ("linear", "conv1d")
VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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


def slot_index(group: SlotGroup, weight: torch.Tensor) -> torch.Tensor:
    """The group's neuron indices as a long tensor on ``weight``'s device."""
    return torch.tensor(group.indices, dtype=torch.long, device=weight.device)


def slot_names(slots: set[tuple[int, int]]) -> str:
    return ", ".join(f"L{layer}.N{index}" for layer, index in sorted(slots))


def module_path(lm: LanguageModel, layer: int) -> str:
    """Dotted path, from the model's root, of ``layer``'s FFN output projection."""
    target = lm.ffn_out(layer)
    for name, module in lm.model.named_modules():
        if module is target:
            return name
    raise EditError(f"The FFN output projection of layer {layer} is not a submodule of {lm.name}.")  # pragma: no cover


def is_int(value: object) -> bool:
    """Whether ``value`` is an int (a bool is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def finite_or_error(values: torch.Tensor, what: str) -> None:
    """EditError unless every entry of ``values`` is finite (NaN or inf would make the edit impossible to undo
    by comparison, and the model useless)."""
    if not bool(torch.isfinite(values).all()):
        bad = int((~torch.isfinite(values)).sum())
        raise EditError(f"{what} has {bad} non-finite entr{'y' if bad == 1 else 'ies'} (NaN or inf); an edit's "
                        "values must be finite numbers.")


@dataclass(frozen=True)
class SlotGroup:
    """The value slots an edit touches in one layer.

    Attributes:
        layer: the layer.
        module: dotted path of its FFN output projection (e.g. ``model.layers.21.mlp.down_proj``).
        layout: "linear" (slot = weight column) or "conv1d" (slot = weight row).
        indices: the neurons whose slots change, in order.
        values: (len(indices), hidden) floating tensor of finite numbers: one delta (op "add") or new value
            (op "set") per slot.
    """

    layer: int
    module: str
    layout: str
    indices: tuple[int, ...]
    values: torch.Tensor

    def __post_init__(self) -> None:
        if not is_int(self.layer) or self.layer < 0:
            raise EditError(f"An edit's layer is a non-negative integer, not {self.layer!r}.")
        if not isinstance(self.module, str) or not self.module:
            raise EditError(f"Layer {self.layer} of the edit names no module (got {self.module!r}).")
        if self.layout not in LAYOUTS:
            raise EditError(f"Layer {self.layer} of the edit has layout {self.layout!r}; a layout is 'linear' "
                            "or 'conv1d'.")
        if not isinstance(self.indices, tuple) or not all(is_int(i) and i >= 0 for i in self.indices):
            raise EditError(f"Layer {self.layer} of the edit lists neurons {self.indices!r}; they are "
                            "non-negative integers.")
        if not self.indices:
            raise EditError(f"Layer {self.layer} of the edit lists no neuron.")
        if len(set(self.indices)) != len(self.indices):
            raise EditError(f"Layer {self.layer} of the edit lists a neuron twice: {self.indices}.")
        if not isinstance(self.values, torch.Tensor) or self.values.dtype not in VALUE_DTYPES:
            raise EditError(f"Layer {self.layer}: an edit's values are a float16, bfloat16, float32 or float64 "
                            f"tensor, not {getattr(self.values, 'dtype', type(self.values).__name__)}.")
        if self.values.dim() != 2 or self.values.shape[0] != len(self.indices) or self.values.shape[1] < 1:
            raise EditError(f"Layer {self.layer}: values of shape {tuple(self.values.shape)} do not give one "
                            f"vector per neuron ({len(self.indices)}).")
        finite_or_error(self.values, f"Layer {self.layer} of the edit")
