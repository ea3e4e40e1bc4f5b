"""Measurements the studies share: batched answer probabilities (optionally under neuron patches, many patch sets at
once), neuron activations at chosen positions, the paper's relative change, ROC AUC, and per-relation summaries.

Rows are sorted by token length and batched with right padding and an attention mask: the padding comes after
every position that is read, so for a causal model nothing read can attend to it, and a masked model masks it
out; a batched result equals the one-by-one result up to float rounding (tested on tiny models of several
families in float64).

Example:
    >>> queries = [encode(lm, p, fact.object) for p in fact.prompts()]
    >>> before = answer_probabilities(lm, queries)
    >>> after = answer_probabilities(lm, queries, suppress_patches([(17, 1234)]))
    >>> relative_change(before, after).mean()
    >>> sets = [[], suppress_patches([(17, 1234)]), scale_patches([(17, 1234)], 2.0)]
    >>> clean, suppressed, amplified = patched_probabilities(lm, queries, sets)   # the same, in fewer passes
"""

from __future__ import annotations

import copy
import math
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from kneuron.facts.encoding import EncodedQuery
from kneuron.facts.known import head_index, right_padded
from kneuron.models.hooks import NeuronPatch, capture, patch, patch_rows
from kneuron.models.language_model import LanguageModel
from kneuron.models.partial_forward import cache_argument, logits_at, prefix_cache

NeuronKey = tuple[int, int]


def by_length(items: Sequence[torch.Tensor], batch_size: int) -> list[list[int]]:
    """Indices of ``items`` (1-D id tensors) in batches of at most ``batch_size``, sorted by length (stable), so
    that each batch needs little padding."""
    order = sorted(range(len(items)), key=lambda i: int(items[i].shape[0]))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def padded(lm: LanguageModel, rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` right-padded into one (batch, longest) id tensor, and its attention mask, on the model's device
    (:func:`~kneuron.facts.known.right_padded`)."""
    ids, mask = right_padded(lm, rows)
    return ids.to(lm.device), mask.to(lm.device)


@torch.no_grad()
def answer_probabilities(lm: LanguageModel, queries: Sequence[EncodedQuery], patches: Iterable[NeuronPatch] = (),
                         *, batch_size: int = 32,
                         row_patches: Sequence[Sequence[NeuronPatch]] | None = None) -> np.ndarray:
    """The joint probability of each query's answer, with ``patches`` applied at each query's answer position.

    The answer position is :attr:`EncodedQuery.position`, the position whose output predicts the first answer
    token (the position attribution scored). Multi-token answers are scored by their teacher-forced joint
    probability; the patch touches only that first position. ``row_patches`` (one list per query, instead of
    ``patches``) gives each query its own patches, so that many patched variants share forward passes.

    Returns:
        (len(queries),) float64 array.
    """
    patches = list(patches)
    if row_patches is not None and (patches or len(row_patches) != len(queries)):
        raise ValueError("row_patches needs one list of patches per query, and no patches beside it")
    out = np.zeros(len(queries), dtype=np.float64)
    for batch in by_length([q.input_ids for q in queries], batch_size):
        chosen = [queries[i] for i in batch]
        ids, mask = padded(lm, [q.input_ids for q in chosen])
        positions = torch.tensor([q.position for q in chosen])
        index = head_index([q.target_positions for q in chosen])
        if row_patches is not None:
            context = patch_rows(lm, [row_patches[i] for i in batch], positions=positions)
        else:
            context = patch(lm, patches, positions=positions) if patches else nullcontext()
        with context, logits_at(lm, index) as sliced:
            logits = lm.model(input_ids=ids, attention_mask=mask).logits
        for row, (i, query) in enumerate(zip(batch, chosen, strict=True)):
            out[i] = joint_probability(logits[row], query, sliced)
    return out


def shares_prefix(lm: LanguageModel, query: EncodedQuery) -> bool:
    """Whether the tokens of ``query`` before its answer position can be run once for every patch set (a causal
    model, whose earlier positions never see later ones, and something before the answer position)."""
    return lm.kind == "causal" and query.position > 0


@torch.no_grad()
def patched_probabilities(lm: LanguageModel, queries: Sequence[EncodedQuery],
                          patch_sets: Sequence[Iterable[NeuronPatch]], *, batch_size: int = 64) -> np.ndarray:
    """The joint probability of each query's answer under each set of patches, applied at the query's answer
    position (an empty set gives the clean probability): row ``s`` is what
    ``answer_probabilities(lm, queries, patch_sets[s])`` gives, up to float rounding, in far fewer passes.

    For a causal model the tokens before the answer position are the same under every set (nothing is patched
    there, and they never see later positions): they run once per prompt, into a key/value cache, and every set
    then runs only the answer position onwards from a copy of it, one set per batch row
    (:func:`~kneuron.models.hooks.patch_rows`); prompts of the same shape share those passes. A masked model sees
    both sides of its [MASK], so it runs whole prompts, still many (set, prompt) rows per batch.

    Args:
        batch_size: rows (one prompt under one set) per forward pass.

    Returns:
        (len(patch_sets), len(queries)) float64 array.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    sets = [list(s) for s in patch_sets]
    for p in (p for s in sets for p in s):  # refused before any pass, not after the first prefix ran
        lm.check_neuron(p.layer, p.index)
    out = np.zeros((len(sets), len(queries)), dtype=np.float64)
    if not sets or not queries:
        return out
    shapes: dict[tuple, list[int]] = defaultdict(list)
    whole = []
    for q, query in enumerate(queries):
        if shares_prefix(lm, query):
            shapes[len(query), query.target_positions].append(q)
        else:
            whole.append(q)
    for members in shapes.values():
        out[:, members] = _from_prefix(lm, [queries[q] for q in members], sets, batch_size)
    if whole:
        flat = [queries[q] for _ in sets for q in whole]
        per_row = [s for s in sets for _ in whole]
        out[:, whole] = answer_probabilities(lm, flat, batch_size=batch_size,
                                             row_patches=per_row).reshape(len(sets), len(whole))
    return out


def _from_prefix(lm: LanguageModel, queries: Sequence[EncodedQuery], sets: Sequence[list[NeuronPatch]],
                 batch_size: int) -> np.ndarray:
    """(len(sets), len(queries)) probabilities of causal prompts of one shape (length and answer positions): the
    prefixes of as many prompts as a batch holds with all their sets run together, once; then each chunk of their
    (prompt, set) rows runs the answer position onwards from a copy of that cache."""
    start = queries[0].position
    offsets = [t - start for t in queries[0].target_positions]
    per_prompt = min(len(sets), batch_size)  # sets per pass of one prompt
    together = max(1, batch_size // len(sets))  # prompts per pass (1 when a prompt's sets need several)
    out = np.zeros((len(sets), len(queries)), dtype=np.float64)
    for first_query in range(0, len(queries), together):
        chosen = queries[first_query:first_query + together]
        ids = torch.stack([q.input_ids for q in chosen]).to(lm.device)
        with logits_at(lm, torch.zeros(len(chosen), 1, dtype=torch.long)):  # the prefix's logits are not read
            prefix = prefix_cache(lm, ids[:, :start])
        for first_set in range(0, len(sets), per_prompt):
            chunk = sets[first_set:first_set + per_prompt]
            last = first_set + per_prompt >= len(sets)
            cache = prefix if last else copy.deepcopy(prefix)  # the pass extends its cache in place
            cache.batch_repeat_interleave(len(chunk))  # row r: prompt r // len(chunk), set r % len(chunk)
            rows = len(chosen) * len(chunk)
            index = torch.tensor([offsets] * rows)
            with patch_rows(lm, [s for _ in chosen for s in chunk], positions=0), logits_at(lm, index) as sliced:
                logits = lm.model(input_ids=ids[:, start:].repeat_interleave(len(chunk), dim=0), use_cache=True,
                                  **{cache_argument(lm.model): cache}).logits
            for p, query in enumerate(chosen):
                for s in range(len(chunk)):
                    out[first_set + s, first_query + p] = joint_probability(logits[p * len(chunk) + s], query,
                                                                            sliced, offset=start)
    return out


def joint_probability(logits: torch.Tensor, query: EncodedQuery, sliced: bool, offset: int = 0) -> float:
    """The joint probability of ``query``'s answer from one row's ``logits``: (k, vocab) logits at its target
    positions when ``sliced`` (see :func:`~kneuron.models.partial_forward.logits_at`), else (seq, vocab) logits of
    positions ``offset`` onwards."""
    positions = torch.arange(len(query.target_positions)) if sliced else torch.tensor(query.target_positions) - offset
    targets = positions.to(logits.device)
    answer = torch.tensor(query.answer_ids, device=logits.device)
    log_probs = torch.log_softmax(logits[targets].double(), dim=-1).gather(-1, answer[:, None])
    return float(log_probs.sum().exp())


@torch.no_grad()
def activations_at(lm: LanguageModel, inputs: Sequence[tuple[torch.Tensor, int | Sequence[int] | None]],
                   neurons: Sequence[NeuronKey], *, batch_size: int = 32) -> np.ndarray:
    """Activations of ``neurons`` for each ``(input_ids, position)``; a list of positions means the mean over
    them, ``None`` the mean over all positions of the row.

    Returns:
        (len(inputs), len(neurons)) float64 array (columns in the order of ``neurons``).
    """
    out = np.zeros((len(inputs), len(neurons)), dtype=np.float64)
    if not neurons or not inputs:
        return out
    layers = sorted({layer for layer, _ in neurons})
    for batch in by_length([ids for ids, _ in inputs], batch_size):
        ids, mask = padded(lm, [inputs[i][0] for i in batch])
        positions = [inputs[i][1] for i in batch]
        lengths = [int(inputs[i][0].shape[0]) for i in batch]
        with capture(lm, layers, positions=None) as acts, logits_at(lm, torch.zeros(len(batch), 1, dtype=torch.long)):
            lm.model(input_ids=ids, attention_mask=mask)  # the logits are not needed: the head computes one
        for column, (layer, index) in enumerate(neurons):
            values = acts[layer][:, :, index].double()  # (batch, seq)
            for row, (i, position) in enumerate(zip(batch, positions, strict=True)):
                if position is None:
                    out[i, column] = float(values[row, :lengths[row]].mean())
                elif isinstance(position, int):
                    out[i, column] = float(values[row, position])
                else:
                    out[i, column] = float(values[row, list(position)].mean())
    return out


def relative_change(before: np.ndarray | float, after: np.ndarray | float) -> np.ndarray:
    """The paper's metric, (after - before) / before, elementwise."""
    before = np.asarray(before, dtype=np.float64)
    return (np.asarray(after, dtype=np.float64) - before) / before


def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """ROC AUC of scores that should be higher for ``positive`` than ``negative`` (scikit-learn); NaN when a side
    is empty."""
    from sklearn.metrics import roc_auc_score

    if len(positive) == 0 or len(negative) == 0:
        return math.nan
    labels = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    return float(roc_auc_score(labels, np.r_[np.asarray(positive, float), np.asarray(negative, float)]))


def fact_rng(seed: int, key: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``key`` (e.g. a fact id), not on the order facts come in."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def row(study: str, variant: str, relation: str, fact_id: str, metric: str, value: float) -> dict:
    """One long-format result row, as the atlas stores it."""
    return {"study": study, "variant": variant, "relation": relation, "fact_id": fact_id, "metric": metric,
            "value": float(value)}


@dataclass(frozen=True)
class Summary:
    """Mean (and median, count) of a metric over facts, overall and per relation."""

    variant: str
    metric: str
    mean: float
    median: float
    n: int
    per_relation: dict[str, tuple[float, int]]


def summarize(rows: Iterable[dict], variant: str, metric: str) -> Summary:
    """Average ``metric`` of ``variant`` over the per-fact rows (those with a fact id), overall and per relation.

    Non-finite values are left out (and so not counted in ``n``).
    """
    values, per_relation = [], defaultdict(list)
    for r in rows:
        if r["variant"] == variant and r["metric"] == metric and r.get("fact_id") and math.isfinite(r["value"]):
            values.append(r["value"])
            per_relation[r["relation"]].append(r["value"])
    if not values:
        return Summary(variant, metric, math.nan, math.nan, 0, {})
    return Summary(variant, metric, float(np.mean(values)), float(np.median(values)), len(values),
                   {rel: (float(np.mean(v)), len(v)) for rel, v in sorted(per_relation.items())})
