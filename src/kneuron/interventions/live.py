"""What kneuron knows about the edits applied to a model right now, and the digest of its weights without them.

**Live edits.** Each applied, not yet undone edit whose undo handle (:class:`~kneuron.interventions.edits.
AppliedEdit`) still exists is registered with its model (weakly: the registry keeps neither the model nor the
handle alive). Undo uses the registry to refuse an out-of-order undo: a later live edit of the same slots would
otherwise be left holding stale originals. Once a handle is dropped it can no longer be undone, so its edit is
part of the model from then on. The registry only reads a handle's ``sequence``, ``undone``, ``weights``,
``originals`` and ``edit.groups``; it does not import :mod:`.edits` (which imports it).

**Weight digest.** An edit remembers the weights it was made for as :func:`weights_digest`: the
:func:`kneuron.models.identity.edit_weights_digest` of the model with its live edits read as undone
(:func:`unedited`). So edits made on the same clean model stack, an edit made while another is applied still
fits the clean model, and a checkpoint of the same name and shapes with other weights is told apart. Per-tensor
digests are cached (see :mod:`kneuron.models.identity`); call :func:`forget` after changing weights through
``tensor.data`` (or use ``fingerprint(lm, fresh=True)``).
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

import torch
from torch import nn

from kneuron.interventions.slots import slot_index, write_slots
from kneuron.models.identity import Unedited, edit_weights_digest, forget_atlas_fingerprint, forget_weights_digests
from kneuron.models.language_model import LanguageModel

_LIVE: weakref.WeakKeyDictionary[nn.Module, list[weakref.ref]] = weakref.WeakKeyDictionary()
_SEQUENCE = itertools.count()


def next_sequence() -> int:
    """A number that orders applications (increasing)."""
    return next(_SEQUENCE)


def register(model: nn.Module, handle: Any) -> None:
    """Record ``handle`` (an :class:`~kneuron.interventions.AppliedEdit`) as live on ``model`` (its weights
    changed: the cached atlas fingerprint of ``model`` is dropped)."""
    forget_atlas_fingerprint(model)
    _LIVE.setdefault(model, []).append(weakref.ref(handle))


def unregister(model: nn.Module, handle: Any) -> None:
    """Forget ``handle`` (undone: the cached atlas fingerprint of ``model`` is dropped) and every handle already
    dropped."""
    forget_atlas_fingerprint(model)
    refs = _LIVE.get(model, [])
    refs[:] = [r for r in refs if r() is not None and r() is not handle]


def live(model: nn.Module) -> list[Any]:
    """The live edits of ``model`` (handles not undone and still referenced), in application order."""
    handles = [h for r in _LIVE.get(model, []) if (h := r()) is not None and not h.undone]
    return sorted(handles, key=lambda h: h.sequence)


def forget(model: nn.Module) -> None:
    """Drop the cached weight digests of ``model`` (after changing its weights through ``tensor.data``)."""
    forget_weights_digests(model)


def unedited(model: nn.Module) -> Unedited:
    """For :func:`~kneuron.models.identity.edit_weights_digest`: a tensor of ``model`` as it was before the live
    edits that wrote it (their sequence numbers as the cache key), or None when none did."""

    def base(tensor: torch.Tensor):
        handles = [h for h in live(model) if any(w is tensor for w in h.weights)]
        if not handles:
            return None

        def build() -> torch.Tensor:
            copy = tensor.detach().clone()
            for h in reversed(handles):
                for g, weight, original in zip(h.edit.groups, h.weights, h.originals, strict=True):
                    if weight is tensor:
                        write_slots(copy, g.layout, slot_index(g, copy), original)
            return copy

        return tuple(h.sequence for h in handles), build

    return base


def weights_digest(lm: LanguageModel) -> str:
    """SHA-256 of ``lm``'s weights with its live edits read as undone: an edit file's ``model.weights``."""
    return edit_weights_digest(lm, unedited=unedited(lm.model))
