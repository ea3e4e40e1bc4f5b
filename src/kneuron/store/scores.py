"""How much of each prompt's score matrix an atlas keeps: ``full``, ``sparse`` or ``none`` (``keep_scores``).

* ``full``: the ``scores`` and ``activations`` BLOBs hold the whole ``layers x neurons`` matrices (raw
  little-endian ``dtype`` bytes, row-major): ``8 x layers x neurons`` bytes per prompt in float32.
* ``sparse``: per prompt, every neuron whose score satisfies ``|score| >= SPARSE_THRESHOLD x max(score)``
  (0.05 of the prompt's maximum), and also the neurons where another prompt of the same fact does (the union
  over the fact's bag): the ``scores`` BLOB is their flat indices (``layer * neurons + neuron``, int32,
  ascending) followed by their scores (``dtype``), the ``activations`` BLOB the activations at those indices
  (``dtype``). Coarse neurons at any threshold >= 0.05 depend only on a prompt's own scores above 0.05 x max,
  so coarse sets recomputed from a sparse atlas are exact; the union makes refinement exact too at any share:
  a refined neuron's score is its mean over all prompts of the bag, including prompts where it is small, and
  the union keeps exactly those values (per prompt only, the means and so the order of refined neurons could
  differ). Tested in tests/store/test_scores.py. The threshold is recorded in the params
  (``sparse_threshold``).
* ``none``: both BLOBs are empty; the neurons, probabilities, baselines and gaps are kept.

Readers: :func:`decode_dense` gives dense tensors (zeros where nothing was kept), :func:`decode_sparse` the kept
entries; :func:`check_blobs` checks a stored prompt's BLOB sizes first. :func:`to_blob` / :func:`from_blob` are the
raw little-endian bytes of the baseline and completeness-gap columns. The neurons table (refined, coarse and
activation-baseline neurons) is the same for all three.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from kneuron.errors import AtlasError, InputError

KEEP_SCORES = ("full", "sparse", "none")
#: the share of a prompt's maximum score above which ``sparse`` keeps a score
SPARSE_THRESHOLD = 0.05


def keep_params(keep: str) -> dict[str, Any]:
    """The params entries recording ``keep`` (and, for sparse, its threshold)."""
    return {"keep_scores": keep, **({"sparse_threshold": SPARSE_THRESHOLD} if keep == "sparse" else {})}


def _le(dtype: str) -> np.dtype:
    return np.dtype(dtype).newbyteorder("<")


def sparse_index(bag: Sequence[torch.Tensor], threshold: float = SPARSE_THRESHOLD) -> np.ndarray:
    """The flat indices a sparse atlas keeps for every prompt of a fact: those where some prompt of the bag has
    ``|score| >= threshold x`` its maximum (all indices for a prompt whose maximum is not positive)."""
    keep = None
    for scores in bag:
        flat = scores.detach().cpu().double().numpy().reshape(-1)
        top = float(flat.max()) if flat.size else 0.0
        mine = np.abs(flat) >= threshold * top if top > 0 else np.ones(flat.size, dtype=bool)
        keep = mine if keep is None else keep | mine
    return np.flatnonzero(keep) if keep is not None else np.zeros(0, dtype=np.int64)


def encode(scores: torch.Tensor, activations: torch.Tensor, dtype: str, keep: str,
           index: np.ndarray | None = None) -> tuple[bytes, bytes]:
    """The (scores, activations) BLOBs of one prompt under ``keep``; sparse needs its fact's
    :func:`sparse_index`."""
    matrix = scores.detach().cpu().to(getattr(torch, dtype)).numpy()
    acts = activations.detach().cpu().to(getattr(torch, dtype)).numpy()
    if keep == "full":
        return (np.ascontiguousarray(matrix, dtype=_le(dtype)).tobytes(),
                np.ascontiguousarray(acts, dtype=_le(dtype)).tobytes())
    if keep == "none":
        return b"", b""
    if keep != "sparse" or index is None:
        raise InputError(f"Unknown keep_scores {keep!r}: use {', '.join(map(repr, KEEP_SCORES))}.")
    flat, flat_acts = matrix.reshape(-1), acts.reshape(-1)
    return (index.astype(_le("int32")).tobytes() + flat[index].astype(_le(dtype)).tobytes(),
            flat_acts[index].astype(_le(dtype)).tobytes())


def decode_sparse(scores_blob: bytes, activations_blob: bytes, dtype: str
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(flat indices, scores, activations)`` of a sparse prompt."""
    size = np.dtype(dtype).itemsize
    count = len(scores_blob) // (4 + size)
    index = np.frombuffer(scores_blob[:4 * count], dtype=_le("int32")).astype(np.int64)
    values = np.frombuffer(scores_blob[4 * count:], dtype=_le(dtype)).astype(dtype)
    acts = np.frombuffer(activations_blob, dtype=_le(dtype)).astype(dtype)
    return index, values, acts


def decode_dense(scores_blob: bytes, activations_blob: bytes, dtype: str, shape: tuple[int, int], keep: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``(scores, activations)`` of one prompt; zeros where a sparse atlas kept nothing."""
    if keep == "none":
        raise AtlasError("This atlas keeps no score matrices (made with --keep-scores none): its neurons, "
                           "probabilities and baselines are there; re-run with --keep-scores sparse or full.")
    if keep == "full":
        return (torch.from_numpy(np.frombuffer(scores_blob, dtype=_le(dtype)).astype(dtype).reshape(shape)),
                torch.from_numpy(np.frombuffer(activations_blob, dtype=_le(dtype)).astype(dtype).reshape(shape)))
    index, values, acts = decode_sparse(scores_blob, activations_blob, dtype)
    dense, dense_acts = np.zeros(shape[0] * shape[1], dtype=dtype), np.zeros(shape[0] * shape[1], dtype=dtype)
    dense[index], dense_acts[index] = values, acts
    return torch.from_numpy(dense.reshape(shape)), torch.from_numpy(dense_acts.reshape(shape))


# ------------------------------------------------------------------------------------------------ raw BLOBs


def to_blob(tensor: torch.Tensor, dtype: str) -> bytes:
    """Raw little-endian bytes of ``tensor`` in numpy ``dtype`` ("float32" or "float64")."""
    return np.ascontiguousarray(tensor.detach().cpu().to(getattr(torch, dtype)).numpy(),
                                dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def from_blob(blob: bytes, dtype: str, shape: Sequence[int]) -> torch.Tensor:
    """The tensor :func:`to_blob` stored."""
    array = np.frombuffer(blob, dtype=np.dtype(dtype).newbyteorder("<")).reshape(tuple(shape))
    return torch.from_numpy(array.astype(np.dtype(dtype), copy=True))


def blob_dtype(scores: torch.Tensor) -> str:
    """float64 for float64 scores, float32 otherwise (lossless for float32, float16 and bfloat16)."""
    return "float64" if scores.dtype == torch.float64 else "float32"


def check_blobs(row: Mapping[str, Any], shape: tuple[int, int], keep: str = "full") -> None:
    """Raise ValueError unless the prompt's BLOBs have the sizes its dtype, shape and ``keep_scores`` say
    (sparse: whole (index, score) entries, an activation per entry, indices inside the matrix)."""
    if row["dtype"] not in ("float32", "float64"):
        raise ValueError(f"unknown dtype {row['dtype']!r}")
    width = np.dtype(row["dtype"]).itemsize
    cells = shape[0] * shape[1]
    sizes = [("baseline", shape[0] * 8), ("completeness_gap", shape[0] * 8)]
    if keep == "full":
        sizes += [("scores", cells * width), ("activations", cells * width)]
    elif keep == "none":
        sizes += [("scores", 0), ("activations", 0)]
    else:
        blob = row["scores"]
        if not isinstance(blob, bytes) or len(blob) % (4 + width):
            raise ValueError(f"its sparse scores BLOB is not whole (index, {row['dtype']}) entries")
        count = len(blob) // (4 + width)
        sizes.append(("activations", count * width))
        index = np.frombuffer(blob[:4 * count], dtype=np.dtype("int32").newbyteorder("<"))
        if count and (index.min() < 0 or index.max() >= cells):
            raise ValueError("its sparse scores BLOB has an index outside the matrix")
    for name, size in sizes:
        if not isinstance(row[name], bytes) or len(row[name]) != size:
            raise ValueError(f"its {name} BLOB does not hold {size} bytes")
