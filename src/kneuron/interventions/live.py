"""What kneuron knows about the edits applied to a model right now: their undo handles (:class:`AppliedEdit`),
and the digest of the model's weights without them.

**Live edits.** Each applied, not yet undone edit whose undo handle still exists is registered with its model
(weakly: the registry keeps neither the model nor the handle alive). Undo uses the registry to refuse an
out-of-order undo: a later live edit of the same slots would otherwise be left holding stale originals. Once
a handle is dropped it can no longer be undone, so its edit is part of the model from then on.

**Weight digest.** An edit remembers the weights it was made for as a SHA-256 digest of every parameter and
buffer of the model (name, shape, dtype and all bytes; what :func:`kneuron.store.atlas.model_identity` hashes
with BLAKE2b, here without the tokenizer), computed with the live edits read as undone. So edits made on the
same clean model stack, an edit made while another is applied still fits the clean model, and a checkpoint of
the same name and shapes with other weights is told apart.

Hashing SmolLM2-135M (0.54 GB of float32) once takes about 1 s, too slow to repeat at every apply, so each
tensor's digest is cached, keyed by the tensor object, its storage address and its version counter (which
every in-place change through autograd bumps: ``weight[...] = x`` under ``torch.no_grad()``,
``load_state_dict``, optimizers). An in-place change through ``tensor.data`` bypasses the version counter:
call :func:`forget` (or ``fingerprint(lm, fresh=True)``) after one.
"""

from __future__ import annotations

import hashlib
import itertools
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kneuron.errors import EditError
from kneuron.interventions.slots import read_slots, same_bits, slot_index, slot_names, write_slots
from kneuron.models.language_model import LanguageModel

if TYPE_CHECKING:
    from kneuron.interventions.edits import Edit

_LIVE: weakref.WeakKeyDictionary[nn.Module, list[weakref.ref]] = weakref.WeakKeyDictionary()
_DIGESTS: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple]] = weakref.WeakKeyDictionary()
_SEQUENCE = itertools.count()


def next_sequence() -> int:
    """A number that orders applications (increasing)."""
    return next(_SEQUENCE)


def register(model: nn.Module, handle: Any) -> None:
    """Record ``handle`` (an :class:`~kneuron.interventions.AppliedEdit`) as live on ``model``."""
    _LIVE.setdefault(model, []).append(weakref.ref(handle))


def unregister(model: nn.Module, handle: Any) -> None:
    refs = _LIVE.get(model, [])
    refs[:] = [r for r in refs if r() is not None and r() is not handle]


def live(model: nn.Module) -> list[Any]:
    """The live edits of ``model`` (handles not undone and still referenced), in application order."""
    handles = [h for r in _LIVE.get(model, []) if (h := r()) is not None and not h.undone]
    return sorted(handles, key=lambda h: h.sequence)


def forget(model: nn.Module) -> None:
    """Drop the cached weight digests of ``model`` (after changing its weights through ``tensor.data``)."""
    _DIGESTS.pop(model, None)


def _tensor_digest(name: str, tensor: torch.Tensor) -> str:
    data = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest = hashlib.sha256(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
    if data.numel():
        digest.update(data.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _named_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.state_dict(keep_vars=True).items()


Base = Callable[[torch.Tensor], "tuple[tuple, Callable[[], torch.Tensor]] | None"]


def weights_digest(model: nn.Module, base: Base) -> str:
    """SHA-256 over every tensor of ``model``'s ``state_dict``; ``base(tensor)`` may give, for a tensor live edits
    wrote, ``(key, a function returning the tensor as it was before them)``, ``key`` identifying those edits."""
    cache = _DIGESTS.setdefault(model, {})
    total = hashlib.sha256()
    for name, tensor in _named_tensors(model):
        if tensor.device.type == "meta":
            total.update(f"{name}|meta|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
            continue
        before = base(tensor)
        key = (tensor._version, tensor.data_ptr(), tuple(tensor.shape), tensor.dtype, before[0] if before else ())
        entry = cache.get(name)
        if entry is None or entry[0]() is not tensor or entry[1] != key:
            entry = (weakref.ref(tensor), key, _tensor_digest(name, before[1]() if before else tensor))
            cache[name] = entry
        total.update(f"{name}:{entry[2]}\n".encode())
    return total.hexdigest()


@dataclass(eq=False)
class AppliedEdit:
    """The undo handle :meth:`Edit.apply` returns: it holds copies of the original slot values.

    ``undo()`` writes them back (bit-exact). It refuses while a later edit of some of the same slots is still
    applied (undo that one first), and when the slots' bits changed after the edit was applied (by something
    else than kneuron). ``undo(force=True)`` first undoes the later live edits of the same slots, latest first,
    then writes the originals back whatever the slots hold. Also a context manager: ``with edit.apply(lm): ...``
    undoes on exit (forced).
    """

    edit: Edit
    lm: LanguageModel
    originals: list[torch.Tensor] = field(repr=False)
    written: list[torch.Tensor] = field(repr=False)
    weights: list[torch.Tensor] = field(repr=False)
    sequence: int = 0
    undone: bool = False

    @property
    def slots(self) -> set[tuple[int, int]]:
        """``(id of the weight tensor, neuron)`` of every slot written."""
        return {(id(w), i) for g, w in zip(self.edit.groups, self.weights, strict=True) for i in g.indices}

    def _later(self) -> list[AppliedEdit]:
        """Live edits applied after this one that touch its slots, or the slots of one of those (in order)."""
        chain, slots = [], self.slots
        for other in live(self.lm.model):
            if other.sequence > self.sequence and other.slots & slots:
                chain.append(other)
                slots = slots | other.slots
        return chain

    def undo(self, *, force: bool = False) -> None:
        if self.undone:
            raise EditError(f"{self.edit} was already undone.")
        later = self._later()
        if later and not force:
            shared = set(later[0].edit.neurons) & set(self.edit.neurons)
            raise EditError(
                f"{later[0].edit} was applied after {self.edit} to the same neurons ({slot_names(shared)}) and is "
                "still applied: undo it first (or call undo(force=True) to undo both)."
            )
        if not force:
            with torch.no_grad():
                for g, weight, expected in zip(self.edit.groups, self.weights, self.written, strict=True):
                    if not same_bits(read_slots(weight, g.layout, slot_index(g, weight)), expected):
                        raise EditError(
                            f"The slots of {self.edit} changed after it was applied (by something else than a "
                            "kneuron edit). Call undo(force=True) to write the original values back anyway."
                        )
        for other in reversed(later):
            other._restore()
        self._restore()

    def _restore(self) -> None:
        with torch.no_grad():
            for g, weight, original in zip(self.edit.groups, self.weights, self.originals, strict=True):
                write_slots(weight, g.layout, slot_index(g, weight), original)
        self.undone = True
        unregister(self.lm.model, self)

    def __enter__(self) -> LanguageModel:
        return self.lm

    def __exit__(self, *exc) -> None:
        if not self.undone:
            self.undo(force=True)
