"""What a neuron writes: its value slot projected onto the vocabulary (Geva et al. 2022).

A neuron (l, i) with activation a adds ``m · a · w_i`` to the residual stream (w_i its value slot, m the block's FFN
output multiplier: Granite's ``residual_multiplier``, 1 elsewhere). The output head reads the final stream x as
``c · U · Proj · (γ ⊙ P x / r + β) + b``. What adding the direction v does to the logits, with the final norm's
scale r held fixed, is ``(c / r) · U · Proj · (γ ⊙ P v)``; r > 0 is one number per position and changes no order, so
the projection of neuron i is

    logit_t = s · c · m · E_t · (γ ⊙ P (g ⊙ w_i)),      E = U · Proj  (vocabulary × hidden)

* U the output head's weight (the unembedding; tied to the input embedding in SmolLM2), Proj OPT's ``project_out``
  where the model has one, c the factor the model multiplies its logits by (Cohere's ``logit_scale``, 1 / Granite's
  ``logits_scaling``), all read by :func:`kneuron.models.readout.output_head`;
* γ the final norm's weight (``1 + weight`` for Gemma), P the centring of a LayerNorm (``v − mean(v)``; the identity
  for an RMSNorm): for "layernorm" final norms the centred slot times the weight is projected;
* g the weight of the norm that Gemma 2/3 and OLMo 2 apply to the FFN output before the residual
  (``ArchSpec.ffn_output_norm``; its 1/RMS is one positive number per position, dropped like r); 1 elsewhere;
* s = ±1, the sign of the neuron's activation on the fact's prompts: a neuron whose activation is negative writes
  −w_i, so what it promotes is what its slot suppresses. Without signs s = +1 (the slot as stored).

**Left out, on purpose:** the biases (the final norm's β, the head's b, the FFN output projection's bias) add the same
vector whatever the neuron does, so they are not what it writes; the final logit soft-capping (Gemma 2) is monotonic
and changes no rank (the logits here are before it). Masked LMs: their specs name no final norm and their head
transforms the stream non-linearly before the decoder, so the slot is projected on the decoder's weight (the output
embeddings) alone, the space in which the paper's update rule writes e(t). A model whose output embeddings are
narrower than the stream (ALBERT's factorised embeddings) has no projection.

Logits are per unit of activation and of the final norm's scale: comparable between the neurons of one model, not
between models. A rank is 0 for the most promoted token (the token with the largest logit); ties share the best rank.

The normalised unembedding ``c · E · diag(γ) · P`` (P folded in by centring each row) is computed once per model and
kept while the model lives (:func:`normalised_unembedding`; recomputed when the head or the final norm is changed in
place), so projecting a fact's neurons is one (vocabulary × hidden) @ (hidden × neurons) product.

Example:
    >>> found = neuron_vocabulary(lm, [(17, 1234), (20, 88)], signs=[1.0, -1.0], top=10, answer_id=3681)
    >>> [lm.tokenizer.decode([t]) for t, _ in found[0].promoted], found[0].answer_rank
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from kneuron.attribution.types import Neuron
from kneuron.errors import InputError, KneuronError, VocabularyError
from kneuron.interventions.slots import read_slots
from kneuron.interventions.update import NeuronKey, neuron_keys
from kneuron.models.architectures import ffn_output_multiplier
from kneuron.models.language_model import LanguageModel
from kneuron.models.readout import output_head


@dataclass(frozen=True)
class NeuronVocabulary:
    """What one neuron writes, as tokens.

    Attributes:
        layer, index: the neuron.
        sign: +1 or -1, the sign its slot was taken with (its activation's).
        promoted: ``(token id, logit)`` of the tokens it raises most, most first.
        suppressed: ``(token id, logit)`` of the tokens it lowers most, most lowered first (negative logits).
        answer_id: the token whose ranks were asked for, or None.
        answer_rank: how many tokens it promotes more than ``answer_id`` (0: the answer is its top token).
        answer_suppressed_rank: how many tokens it lowers more than ``answer_id`` (0: the answer is what it lowers
            most).
        answer_logit: its logit of ``answer_id``.
        vocab_size: how many tokens were ranked (the output head's rows).
    """

    layer: int
    index: int
    sign: float
    promoted: tuple[tuple[int, float], ...]
    suppressed: tuple[tuple[int, float], ...]
    answer_id: int | None = None
    answer_rank: int | None = None
    answer_suppressed_rank: int | None = None
    answer_logit: float | None = None
    vocab_size: int = 0

    @property
    def key(self) -> NeuronKey:
        return (self.layer, self.index)

    def __str__(self) -> str:
        return f"L{self.layer}.N{self.index}"


def compute_dtype(lm: LanguageModel) -> torch.dtype:
    """float64 for float64 models, else float32 (half-precision weights are projected in float32)."""
    return torch.float64 if lm.dtype == torch.float64 else torch.float32


#: per model, (what the matrix was computed from, the matrix); entries go when the model does
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint(tensors: Iterable[torch.Tensor | None], dtype: torch.dtype) -> tuple:
    """Which tensors (storage, in-place version counter) a cached matrix was computed from."""
    return (dtype, *((None if t is None else (t.data_ptr(), t._version, tuple(t.shape))) for t in tensors))


@torch.no_grad()
def normalised_unembedding(lm: LanguageModel) -> torch.Tensor:
    """``c · U · Proj · diag(γ) · P`` (vocabulary × hidden) in :func:`compute_dtype`: row t is the direction whose
    dot product with a slot is token t's logit (see the module docstring). Cached per model; recomputed when the
    head, its projection or the final norm's weight changed (in place or replaced).

    Raises:
        VocabularyError: no linear output head, or output embeddings that do not live in the residual stream.
    """
    dtype = compute_dtype(lm)
    try:
        parts = output_head(lm, dtype)
    except KneuronError as exc:
        raise VocabularyError(f"{exc} The value slots cannot be projected onto the vocabulary.") from None
    norm_weight = getattr(parts.norm, "weight", None) if parts.norm is not None else None
    sources = (parts.head.weight, getattr(parts.projection, "weight", None),
               norm_weight if isinstance(norm_weight, torch.Tensor) else None)
    key = _fingerprint(sources, dtype)
    cached = _CACHE.get(lm.model)
    if cached is not None and cached[0] == key:
        return cached[1]
    matrix = parts.head.weight.detach().to(dtype)
    if parts.projection is not None:
        matrix = matrix @ parts.projection.weight.detach().to(dtype)
    hidden = lm.value_slot(0, 0).shape[0]
    if matrix.shape[1] != hidden:
        raise VocabularyError(
            f"{lm.name}'s output embeddings are {matrix.shape[1]} wide and its value slots {hidden}: they do not live "
            "in the same space (factorised embeddings, as ALBERT's, are narrower than the hidden states), so a value "
            "slot has no projection onto the vocabulary.")
    matrix = matrix * parts.gamma[None, :]
    if parts.centred:  # U·diag(γ)·P = each row minus its mean (P = I − 11ᵀ/d is symmetric)
        matrix = matrix - matrix.mean(dim=1, keepdim=True)
    if parts.multiplier != 1.0:
        matrix = matrix * parts.multiplier
    matrix = matrix.contiguous()
    _CACHE[lm.model] = (key, matrix)
    return matrix


@torch.no_grad()
def slot_directions(lm: LanguageModel, keys: Sequence[NeuronKey], dtype: torch.dtype | None = None) -> torch.Tensor:
    """(hidden, len(keys)): column j is what neuron ``keys[j]`` adds to the stream per unit of activation, up to a
    positive factor: ``m · g ⊙ w`` (FFN output multiplier, the FFN output norm's weight where the family has one)."""
    dtype = dtype or compute_dtype(lm)
    hidden = lm.value_slot(0, 0).shape[0]
    out = torch.zeros(hidden, len(keys), dtype=dtype, device=lm.device)
    added = ffn_output_multiplier(lm.spec, lm.model.config)
    by_layer: dict[int, list[int]] = {}
    for column, (layer, index) in enumerate(keys):
        lm.check_neuron(layer, index)
        by_layer.setdefault(layer, []).append(column)
    for layer, columns in by_layer.items():
        weight = lm.ffn_out(layer).weight.detach()
        indices = torch.tensor([keys[c][1] for c in columns], dtype=torch.long, device=weight.device)
        slots = read_slots(weight, lm.spec.layout, indices).to(dtype)  # (len(columns), hidden)
        norm = lm.ffn_output_norm(layer)
        norm_weight = getattr(norm, "weight", None) if norm is not None else None
        if isinstance(norm_weight, torch.Tensor):
            slots = slots * (lm.spec.norm_weight_offset + norm_weight.detach().to(dtype))
        out[:, columns] = slots.T.to(out.device)
    return out * added if added != 1.0 else out


def activation_signs(mean_activations: Iterable[float]) -> list[float]:
    """-1.0 for a negative mean activation, else +1.0 (0 counts as positive, as the update rule's sign does)."""
    return [-1.0 if float(value) < 0 else 1.0 for value in mean_activations]


@torch.no_grad()
def slot_logits(lm: LanguageModel, neurons: Iterable[Neuron | NeuronKey], signs: Sequence[float] | None = None,
                ) -> torch.Tensor:
    """(len(neurons), vocabulary): each neuron's logit of every token (see the module docstring), its slot times
    its sign (default +1); one matrix product for all the neurons."""
    keys = neuron_keys(list(neurons))
    if signs is not None and len(signs) != len(keys):
        raise InputError(f"Give one sign per neuron: {len(signs)} signs for {len(keys)} neurons.")
    matrix = normalised_unembedding(lm)
    logits = (matrix @ slot_directions(lm, keys, matrix.dtype).to(matrix.device)).T
    if signs is not None:
        logits = logits * torch.tensor(list(signs), dtype=logits.dtype, device=logits.device)[:, None]
    return logits


def answer_ranks(logits: torch.Tensor, answer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``logits`` (neurons × vocabulary): how many tokens are promoted more than ``answer_id``, and how
    many are suppressed more (0 = the top one; ties share the best rank)."""
    own = logits[:, answer_id:answer_id + 1]
    return (logits > own).sum(dim=1), (logits < own).sum(dim=1)


@torch.no_grad()
def neuron_vocabulary(lm: LanguageModel, neurons: Iterable[Neuron | NeuronKey], signs: Sequence[float] | None = None,
                      *, top: int = 10, answer_id: int | None = None) -> list[NeuronVocabulary]:
    """The ``top`` promoted and suppressed tokens of each neuron (slot times its sign), and where ``answer_id``
    ranks among them; in the order of ``neurons`` (duplicates dropped).

    Raises:
        VocabularyError: the model has no projection (see :func:`normalised_unembedding`).
        InputError: ``top`` below 1, an answer id outside the vocabulary, a sign per neuron missing.
    """
    keys = neuron_keys(list(neurons))
    if top < 1:
        raise InputError(f"top must be at least 1, not {top}.")
    if not keys:
        return []
    logits = slot_logits(lm, keys, signs)
    vocab = logits.shape[1]
    if answer_id is not None and not 0 <= answer_id < vocab:
        raise InputError(f"Token id {answer_id} is outside {lm.name}'s output vocabulary (0..{vocab - 1}).")
    k = min(top, vocab)
    high, high_ids = torch.topk(logits, k, dim=1)
    low, low_ids = torch.topk(-logits, k, dim=1)
    ranks = answer_ranks(logits, answer_id) if answer_id is not None else None
    found = []
    for row, (layer, index) in enumerate(keys):
        extra = {}
        if ranks is not None:
            extra = dict(answer_id=int(answer_id), answer_rank=int(ranks[0][row]),
                         answer_suppressed_rank=int(ranks[1][row]), answer_logit=float(logits[row, answer_id]))
        found.append(NeuronVocabulary(
            layer, index, float(signs[row]) if signs is not None else 1.0,
            tuple(zip(high_ids[row].tolist(), high[row].double().tolist(), strict=True)),
            tuple(zip(low_ids[row].tolist(), (-low[row]).double().tolist(), strict=True)),
            vocab_size=vocab, **extra))
    return found


def token_text(lm: LanguageModel, token_id: int) -> str:
    """A token as the text it writes (``tokenizer.decode``), e.g. ' Paris'."""
    return str(lm.tokenizer.decode([int(token_id)]))


__all__ = ["NeuronVocabulary", "VocabularyError", "activation_signs", "answer_ranks", "compute_dtype",
           "neuron_vocabulary", "normalised_unembedding", "slot_directions", "slot_logits", "token_text"]
