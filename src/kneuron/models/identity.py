"""Who a model is: the two digests of its weights that kneuron stores, so that it recognises the model later.

Both digests hash every tensor of the model's ``state_dict`` (parameters and persistent buffers) as
``"{name}|{shape}|{dtype}|"`` followed by all of the tensor's bytes, so a model edited in one value slot, another
checkpoint of the same shapes, or the same weights in another dtype each give another digest. They differ in
what they cover and in where they are stored, and neither may change: files written by earlier kneurons hold
their values.

- :func:`atlas_fingerprint`, stored in an atlas's meta as ``fingerprint`` (through :func:`model_identity`, see
  :mod:`kneuron.store.atlas`): BLAKE2b-128 over the tensors in ``state_dict`` order, then over the tokenizer's
  vocabulary as JSON of the sorted ``(token, id)`` pairs.
- :func:`edit_weights_digest`, stored in an edit file as its model fingerprint's ``weights`` (format
  ``kneuron-edit/2``, see :mod:`kneuron.interventions.edit_format`): SHA-256 over the lines ``"{name}:{hex}\\n"``,
  ``hex`` being each tensor's own SHA-256; no tokenizer; a tensor live edits wrote may be read as it was before.

Both take the :class:`~kneuron.models.language_model.LanguageModel` and return a hex string. Both are cached per
model, keyed by each tensor: the tensor object, its storage address, shape, dtype and its version counter (which
every in-place change through autograd bumps: ``weight[...] = x`` under ``torch.no_grad()``, ``load_state_dict``,
optimizers, kneuron's edits and their undo). The edit digest caches each tensor's digest (and what ``unedited`` says
about it); the atlas digest, one stream over all tensors, caches the BLAKE2b state after the weights when every
tensor's key is unchanged, and the final digest for the same tokenizer object of the same length (an added token
changes the length, so the vocabulary is hashed again). Hashing SmolLM2-135M (0.54 GB of float32) takes about 1 s
(1.15 s in a profile of a 4-fact run, issue 24), which a second run, the study runner's identity check or a server's
probe of the same model object no longer pays. An in-place change through ``tensor.data`` bypasses the version
counter: call :func:`forget_weights_digests` after one, or pass ``fresh=True`` (what the study runner's check that a
study left the weights unchanged does, so that check does not rest on the cache).

Example:
    >>> model_identity(lm)["fingerprint"] == atlas_fingerprint(lm)
    True
    >>> len(edit_weights_digest(lm))
    64
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kneuron.models.language_model import LanguageModel

#: For a tensor that live edits wrote, ``(key, a function returning the tensor as it was before them)`` (``key``
#: identifies those edits, for the cache); None for a tensor that no live edit touches.
Unedited = Callable[[torch.Tensor], "tuple[tuple, Callable[[], torch.Tensor]] | None"]

_DIGESTS: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple]] = weakref.WeakKeyDictionary()
#: per model: (each tensor's (weak reference, key), the BLAKE2b state after its weights) of the atlas fingerprint
_ATLAS: weakref.WeakKeyDictionary[nn.Module, tuple[list[tuple], Any]] = weakref.WeakKeyDictionary()


def _tensor_bytes(tensor: torch.Tensor) -> memoryview | None:
    """All bytes of ``tensor`` (on the CPU, contiguous); None for an empty tensor."""
    data = tensor.detach().cpu().contiguous().reshape(-1)
    return data.view(torch.uint8).numpy().data if data.numel() else None


# ------------------------------------------------------------------------------------------------------ atlases


def _tensor_key(tensor: torch.Tensor) -> tuple:
    """What changes when a tensor's values may have changed through autograd (see the module docstring)."""
    return (tensor._version, tensor.data_ptr(), tuple(tensor.shape), tensor.dtype, str(tensor.device))


def atlas_fingerprint(lm: LanguageModel, *, fresh: bool = False) -> str:
    """BLAKE2b-128 (hex) of every tensor of ``lm``'s ``state_dict`` and of its tokenizer's vocabulary: what an atlas
    stores as its ``fingerprint`` (a run refuses to write into an atlas of another fingerprint). The weights' part
    is cached per model (see the module docstring); ``fresh`` hashes them again whatever the cache says."""
    model = lm.model
    tensors = list(model.state_dict(keep_vars=True).items())
    keys = [(name, _tensor_key(tensor)) for name, tensor in tensors]
    cached = None if fresh else _ATLAS.get(model)
    if cached is not None and len(cached[0]) == len(tensors) and all(
            ref() is tensor and key == (name, kept) for (ref, kept), (name, tensor), key
            in zip(cached[0], tensors, keys, strict=True)):
        digest = cached[1].copy()
    else:
        digest = hashlib.blake2b(digest_size=16)
        for name, tensor in tensors:
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
            data = _tensor_bytes(tensor)
            if data is not None:
                digest.update(data)
        _ATLAS[model] = ([(weakref.ref(tensor), key) for (_, tensor), (_, key) in zip(tensors, keys, strict=True)],
                         digest.copy())
    return _with_vocabulary(model, lm.tokenizer, digest, fresh)


#: per model: (a weak reference to the tokenizer, its length, the weights' BLAKE2b state, the fingerprint)
_VOCAB: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def _with_vocabulary(model: nn.Module, tokenizer: Any, weights: Any, fresh: bool) -> str:
    """The fingerprint: ``weights`` (the BLAKE2b state after the weights) updated with the tokenizer's sorted
    vocabulary as JSON. Cached per model for the same tokenizer object of the same length (adding a token
    changes the length) after the same weights' state; ``fresh`` computes it again."""
    try:
        ref = weakref.ref(tokenizer)
    except TypeError:
        ref = None
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    state = weights.hexdigest()
    cached = None if fresh or ref is None else _VOCAB.get(model)
    if cached is not None and cached[0]() is tokenizer and cached[1] == size and cached[2] == state:
        return cached[3]
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    weights.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    found = weights.hexdigest()
    if ref is not None:
        _VOCAB[model] = (ref, size, state, found)
    return found


def model_identity(lm: LanguageModel, *, fresh: bool = False) -> dict[str, Any]:
    """What identifies a model in an atlas: family, kind, shape, dtype and the :func:`atlas_fingerprint` of its
    weights and vocabulary (``"fingerprint"``), so a model edited in a single value slot is another model.
    Hashing SmolLM2-135M's 0.5 GB of float32 weights took 1.1 s on a busy 2-core machine; the weights' part is
    cached per model object (``fresh`` hashes them again)."""
    return {"model": lm.name, "family": lm.spec.family, "kind": lm.kind, "n_layers": lm.n_layers,
            "n_neurons": lm.n_neurons, "dtype": str(lm.dtype).removeprefix("torch."),
            "fingerprint": atlas_fingerprint(lm, fresh=fresh)}


# -------------------------------------------------------------------------------------------------------- edits


def _tensor_digest(name: str, tensor: torch.Tensor) -> str:
    digest = hashlib.sha256(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
    data = _tensor_bytes(tensor)
    if data is not None:
        digest.update(data)
    return digest.hexdigest()


def edit_weights_digest(lm: LanguageModel, *, unedited: Unedited | None = None) -> str:
    """SHA-256 (hex) over one SHA-256 per tensor of ``lm``'s ``state_dict``: what an edit file stores as its model's
    ``weights``. ``unedited`` (see :data:`Unedited`) gives, for the tensors live edits wrote, the tensor as it was
    before them, so that the digest is the clean model's while edits are applied (kneuron's edits pass
    :func:`kneuron.interventions.live.unedited`). Tensors on the meta device hash their name, shape and dtype only.
    Per-tensor digests are cached (see the module docstring)."""
    model = lm.model
    cache = _DIGESTS.setdefault(model, {})
    total = hashlib.sha256()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.device.type == "meta":
            total.update(f"{name}|meta|{tuple(tensor.shape)}|{tensor.dtype}\n".encode())
            continue
        before = unedited(tensor) if unedited is not None else None
        key = (tensor._version, tensor.data_ptr(), tuple(tensor.shape), tensor.dtype, before[0] if before else ())
        entry = cache.get(name)
        if entry is None or entry[0]() is not tensor or entry[1] != key:
            entry = (weakref.ref(tensor), key, _tensor_digest(name, before[1]() if before else tensor))
            cache[name] = entry
        total.update(f"{name}:{entry[2]}\n".encode())
    return total.hexdigest()


def forget_atlas_fingerprint(model: nn.Module) -> None:
    """Drop the cached weights' part of :func:`atlas_fingerprint` for ``model`` (kneuron's edits call it when they
    are applied and undone: their writes bump the version counters anyway, so this is a second guard)."""
    _ATLAS.pop(model, None)
    _VOCAB.pop(model, None)


def forget_weights_digests(lm: LanguageModel | nn.Module) -> None:
    """Drop the cached digests of :func:`edit_weights_digest` and :func:`atlas_fingerprint` for ``lm`` (a
    LanguageModel or its ``nn.Module``), after changing its weights through ``tensor.data``."""
    model = lm.model if isinstance(lm, LanguageModel) else lm
    _DIGESTS.pop(model, None)
    forget_atlas_fingerprint(model)
