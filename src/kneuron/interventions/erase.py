"""Erase a relation (Dai et al. 2022, section 5.2): the value slots of its most common knowledge neurons are
set to zero (``mode="zero"``) or to the unknown token's output embedding (``mode="unknown"``, the paper's
[UNK]).

"Most common" counts, for each neuron, how many of the relation's facts have it as a knowledge neuron
(e.g. ``atlas.relation_neurons(relation)``, or :func:`count_neurons` over the facts' neuron lists); the
``top`` neurons with the highest counts are erased, ties broken by (layer, index) so the choice is
deterministic.

Shared layers (ALBERT: one layer's weights at every depth): neurons (d1, i) and (d2, i) of depths that run one
block are one value slot, and erasing it erases neuron i at every depth of the block. ``top`` then counts slots:
the neurons are taken in the order above, a neuron whose slot is already chosen adds nothing, and the edit's
``meta["merged"]`` lists the relation's neurons that each erased slot stands for.

Example:
    >>> edit = erase_relation(lm, atlas.relation_neurons("capital"), top=20, mode="zero")
    >>> with edit.applied(lm):
    ...     ...   # the relation's facts should be forgotten, others kept
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Literal

import torch

from kneuron.attribution.types import KnowledgeNeurons, Neuron
from kneuron.errors import EditError, EditOptionError
from kneuron.interventions.edits import Edit
from kneuron.interventions.update import NeuronKey, neuron_keys, output_embeddings
from kneuron.models.language_model import LanguageModel

EraseMode = Literal["zero", "unknown"]


def count_neurons(neuron_lists: Iterable[KnowledgeNeurons | Iterable[Neuron | NeuronKey]]) -> Counter:
    """How many of the lists (one per fact) contain each neuron: ``Counter[(layer, index)]``."""
    counts: Counter = Counter()
    for neurons in neuron_lists:
        counts.update(neuron_keys(neurons))
    return counts


def top_neurons(relation_neurons: Mapping[NeuronKey, int], top: int) -> list[tuple[NeuronKey, int]]:
    """The ``top`` neurons with the highest counts, ties broken by (layer, index)."""
    items = [((int(k[0]), int(k[1])), int(c)) for k, c in relation_neurons.items() if c > 0]
    items.sort(key=lambda item: (-item[1], item[0]))
    return items[:top]


def erase_relation(
    lm: LanguageModel,
    relation_neurons: Mapping[NeuronKey, int] | Iterable[KnowledgeNeurons | Iterable[Neuron | NeuronKey]],
    *,
    top: int = 20,
    mode: EraseMode = "zero",
    relation: str = "",
) -> Edit:
    """The edit that sets the value slots of the relation's ``top`` most common knowledge neurons to zero or to
    the unknown token's output embedding.

    Args:
        relation_neurons: ``{(layer, index): number of the relation's facts}`` (a Counter), or the facts'
            neuron lists to count.
        top: how many neurons to erase (fewer when the relation has fewer).
        mode: "zero" or "unknown".
        relation: its name, for the label.

    Raises:
        KneuronError: no neurons, ``top`` < 1, an unknown mode, or mode "unknown" and a tokenizer without an
            unknown token.
    """
    if top < 1:
        raise EditOptionError(f"top must be at least 1, not {top}.")
    counts = relation_neurons if isinstance(relation_neurons, Mapping) else count_neurons(relation_neurons)
    chosen = top_neurons(counts, top)
    same_slot: list[NeuronKey] = []  # with shared layers: the relation's other neurons in the chosen slots
    if lm.shared_layers:
        by_slot: dict[NeuronKey, list[tuple[NeuronKey, int]]] = {}  # the ranked neurons, by the slot they share
        for key, count in top_neurons(counts, len(counts)):
            by_slot.setdefault((lm.sharing(key[0])[0], key[1]), []).append((key, count))
        slots = list(by_slot.values())[:top]
        chosen = [members[0] for members in slots]
        same_slot = [key for members in slots for key, _ in members[1:]]
    if not chosen:
        raise EditError(f"There are no neurons to edit: relation {relation or '?'!r} has no knowledge neurons.")
    dtype = lm.ffn_out(chosen[0][0][0]).weight.dtype
    if mode == "zero":
        value = torch.zeros(lm.value_slot(0, 0).shape[0], dtype=dtype)
        meta_token: dict = {}
    elif mode == "unknown":
        unk = getattr(lm.tokenizer, "unk_token_id", None)
        if unk is None:
            raise EditError(f"{lm.name}'s tokenizer has no unknown token; erase with mode='zero' instead.")
        value = output_embeddings(lm)[unk].detach().to("cpu", dtype).clone()
        meta_token = {"unk_token": str(lm.tokenizer.unk_token), "unk_id": int(unk)}
    else:
        raise EditOptionError(f"mode must be 'zero' or 'unknown', not {mode!r}.")
    meta = {"relation": relation, "mode": mode, "top": top, "counts": [[k[0], k[1], c] for k, c in chosen],
            **meta_token}
    label = f"{relation or 'relation'} ({mode})"
    slots = {key: value for key, _ in chosen} | dict.fromkeys(same_slot, value)  # Edit.build writes each slot once
    return Edit.build(lm, "set", slots, kind="erase", label=label, meta=meta)
