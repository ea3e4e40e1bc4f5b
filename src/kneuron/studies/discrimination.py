"""Discrimination: does a fact's knowledge neurons' activation single out text about that fact?

Two measurements, each against the activation baseline (the same number of neurons with the largest activation
on the fact's prompts):

* **prompts** (:func:`prompt_discrimination`): the score of a prompt is the mean activation of the fact's neurons
  at the answer position (the position attribution scored: the prompt's last token for a causal model, the
  first mask for a masked one). Per fact, the ROC AUC (scikit-learn) of the scores of the fact's own prompts
  against the prompts of every other fact of the study. 0.5 is chance, 1 a perfect separation.
* **sentences** (:func:`sentence_discrimination`), as in the paper: sentences that state the fact (they mention
  subject and object) against sentences that mention only the subject, from
  :func:`kneuron.facts.discrimination_sentences`. The activation is read at the **last token** for a causal
  model (the only position that has read the whole sentence) and averaged over the non-special tokens for a
  masked model. Per fact: mean activation on each side, and the ROC AUC.

Gated FFNs (SmolLM2, Llama...) compute act(gate) x up, which is negative as often as not: a knowledge neuron can
matter *because* it is strongly negative on the fact's prompts (its attribution, activation x gradient, is then
positive). The paper's raw mean activation (``auc``, ``sentence_auc``) then ranks the fact's own prompts *lowest*.
The ``*_signed`` AUCs multiply each neuron's activation by the sign of its mean activation on the fact's own
prompts (the direction it took when it was attributed; the neurons themselves were chosen on those prompts) before
averaging. For the activation baseline (largest activations, positive) both agree.

Rows: variant ``kn``, ``baseline`` or ``kn_no_generic``; metric ``auc`` and ``auc_signed`` (prompts),
``sentence_auc``, ``sentence_auc_signed``, ``sentence_positive``, ``sentence_negative`` and ``neurons``.

Both read the activations of the fact's prompts at the answer position; :func:`discrimination` runs both and reads
them in one pass over the prompts (:func:`prompt_activations`), which both then share.

Example:
    >>> rows = prompt_discrimination(lm, facts, neurons_by_fact, baseline_by_fact)
    >>> summarize(rows, "kn", "auc").mean, summarize(rows, "baseline", "auc").mean
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kneuron.attribution.types import Neuron
from kneuron.facts.encoding import EncodedQuery
from kneuron.facts.fact import Fact
from kneuron.models.language_model import LanguageModel
from kneuron.studies.metrics import NeuronKey, activations_at, roc_auc, row
from kneuron.studies.suppress_amplify import encode_facts, keys_of

STUDY = "discrimination"


def _variants(fact_id: str, neurons_by_fact, baseline_by_fact, generic_keys) -> dict[str, list[NeuronKey]]:
    kn = keys_of(neurons_by_fact.get(fact_id, ()))
    sets = {"kn": kn}
    if baseline_by_fact is not None:
        sets["baseline"] = keys_of(baseline_by_fact.get(fact_id, ()))
    sets["kn_no_generic"] = [key for key in kn if key not in generic_keys]
    return sets


def direction(own: np.ndarray) -> np.ndarray:
    """Per neuron (column), the sign of its mean activation over the fact's own prompts (+1 when 0): the direction
    it took when it was attributed."""
    return np.where(own.mean(axis=0) < 0, -1.0, 1.0)


@dataclass(frozen=True)
class PromptActivations:
    """The activations of ``keys`` at the answer position of every prompt of some facts, read in one pass:
    ``by_fact[fact_id]`` is (the fact's prompts, len(keys))."""

    keys: tuple[NeuronKey, ...]
    by_fact: dict[str, np.ndarray]

    def of(self, fact_ids: Iterable[str], keys: Sequence[NeuronKey]) -> np.ndarray:
        """(prompts of ``fact_ids``, in that order, len(keys)) activations, columns in the order of ``keys``."""
        column = {key: i for i, key in enumerate(self.keys)}
        missing = [key for key in keys if key not in column]
        if missing:
            raise ValueError(f"the activations of {missing} were not read")
        blocks = [self.by_fact[fact_id] for fact_id in fact_ids]
        stacked = np.vstack(blocks) if blocks else np.zeros((0, len(self.keys)), dtype=np.float64)
        return stacked[:, [column[key] for key in keys]]


def prompt_activations(lm: LanguageModel, facts: Sequence[Fact], keys: Iterable[NeuronKey], *,
                       queries: Mapping[str, list[EncodedQuery]] | None = None, batch_size: int = 32,
                       ) -> PromptActivations:
    """The activations of ``keys`` at the answer position of every prompt of ``facts`` (one pass over the prompts;
    ``queries``: pre-encoded prompts by fact id, computed when missing)."""
    keys = tuple(sorted(set(keys)))
    queries = encode_facts(lm, facts, queries)
    inputs = [(q.input_ids, q.position) for fact in facts for q in queries[fact.id]]
    acts = activations_at(lm, inputs, keys, batch_size=batch_size)
    by_fact, start = {}, 0
    for fact in facts:
        by_fact[fact.id] = acts[start:start + len(queries[fact.id])]
        start += len(queries[fact.id])
    return PromptActivations(keys, by_fact)


def _needed(sets: Iterable[Mapping[str, Sequence[NeuronKey]]]) -> list[NeuronKey]:
    return sorted({key for variants in sets for keys in variants.values() for key in keys})


def discrimination(
    lm: LanguageModel,
    facts: Sequence[Fact],
    neurons_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]],
    baseline_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]] | None = None,
    *,
    sentences: Callable[[Fact], tuple[Sequence[str], Sequence[str]]] | None = None,
    generic: Iterable[Neuron | NeuronKey] = (),
    batch_size: int = 32,
    queries: Mapping[str, list[EncodedQuery]] | None = None,
) -> list[dict]:
    """The rows of :func:`prompt_discrimination` then those of :func:`sentence_discrimination`, with the
    prompts' activations read once for both."""
    generic_keys = set(keys_of(generic))
    queries = encode_facts(lm, facts, queries)
    needed = _needed(_variants(fact.id, neurons_by_fact, baseline_by_fact, generic_keys) for fact in facts)
    shared = prompt_activations(lm, facts, needed, queries=queries, batch_size=batch_size) if needed else None
    common = {"generic": generic_keys, "batch_size": batch_size, "queries": queries, "activations": shared}
    return (prompt_discrimination(lm, facts, neurons_by_fact, baseline_by_fact, **common)
            + sentence_discrimination(lm, facts, neurons_by_fact, baseline_by_fact, sentences=sentences, **common))


def prompt_discrimination(
    lm: LanguageModel,
    facts: Sequence[Fact],
    neurons_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]],
    baseline_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]] | None = None,
    *,
    generic: Iterable[Neuron | NeuronKey] = (),
    batch_size: int = 32,
    queries: Mapping[str, list[EncodedQuery]] | None = None,
    activations: PromptActivations | None = None,
) -> list[dict]:
    """Per fact and variant, the ROC AUC of own prompts against all other facts' prompts (see the module doc).

    Every prompt runs once: the activations of every neuron any fact needs are read in the same pass (or come
    from ``activations``, which must hold them for every prompt of ``facts``).
    """
    generic_keys = set(keys_of(generic))
    queries = encode_facts(lm, facts, queries)
    sets = {fact.id: _variants(fact.id, neurons_by_fact, baseline_by_fact, generic_keys) for fact in facts}
    needed = _needed(sets.values())
    if not needed:
        return []
    column = {key: i for i, key in enumerate(needed)}
    owner = np.array([f for f, fact in enumerate(facts) for _ in queries[fact.id]])
    if activations is None:
        activations = prompt_activations(lm, facts, needed, queries=queries, batch_size=batch_size)
    acts = activations.of([fact.id for fact in facts], needed)
    rows = []
    for f, fact in enumerate(facts):
        for variant, keys in sets[fact.id].items():
            rows.append(row(STUDY, variant, fact.relation, fact.id, "neurons", len(keys)))
            if not keys:
                continue
            values = acts[:, [column[key] for key in keys]]
            signs = direction(values[owner == f])
            for metric, scores in (("auc", values.mean(axis=1)), ("auc_signed", (values * signs).mean(axis=1))):
                auc = roc_auc(scores[owner == f], scores[owner != f])
                if not math.isnan(auc):
                    rows.append(row(STUDY, variant, fact.relation, fact.id, metric, auc))
    return rows


def sentence_inputs(lm: LanguageModel, sentences: Sequence[str]) -> list[tuple[torch.Tensor, int | list[int]]]:
    """``(input_ids, positions)`` per sentence: the last token for a causal model, the list of non-special
    tokens (to average over) for a masked one."""
    tokenizer = lm.tokenizer
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    out: list[tuple[torch.Tensor, int | list[int]]] = []
    for sentence in sentences:
        ids = list(tokenizer(sentence, add_special_tokens=True)["input_ids"])
        if lm.kind == "causal":
            if len(ids) > 1 and ids[-1] == getattr(tokenizer, "eos_token_id", None):
                ids = ids[:-1]  # a tokenizer that appends EOS: read the sentence's own last token
            out.append((torch.tensor(ids, dtype=torch.long), len(ids) - 1))
        else:
            own = [i for i, token in enumerate(ids) if token not in special] or list(range(len(ids)))
            out.append((torch.tensor(ids, dtype=torch.long), own))
    return out


def sentence_discrimination(
    lm: LanguageModel,
    facts: Sequence[Fact],
    neurons_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]],
    baseline_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]] | None = None,
    *,
    sentences: Callable[[Fact], tuple[Sequence[str], Sequence[str]]] | None = None,
    generic: Iterable[Neuron | NeuronKey] = (),
    batch_size: int = 32,
    queries: Mapping[str, list[EncodedQuery]] | None = None,
    activations: PromptActivations | None = None,
) -> list[dict]:
    """Per fact that has sentences, and per variant: mean activation on stating / subject-only sentences and
    their ROC AUC. ``sentences(fact) -> (positive, negative)`` defaults to the built-in ones. The fact's own
    prompts give each neuron's direction: their activations are read here, or come from ``activations``
    (see :func:`prompt_discrimination`)."""
    if sentences is None:
        from kneuron.facts import discrimination_sentences as sentences
    generic_keys = set(keys_of(generic))
    chosen = []
    for fact in facts:
        positive, negative = (list(side) for side in sentences(fact))
        if positive and negative:
            chosen.append((fact, positive, negative, _variants(fact.id, neurons_by_fact, baseline_by_fact,
                                                               generic_keys)))
    needed = _needed(variants for *_, variants in chosen)
    texts = [text for _, positive, negative, _ in chosen for text in positive + negative]
    if not needed or not texts:
        return []
    column = {key: i for i, key in enumerate(needed)}
    acts = activations_at(lm, sentence_inputs(lm, texts), needed, batch_size=batch_size)  # every sentence once
    # the fact's own prompts, at the answer position, give each neuron's direction (for the signed AUC)
    if activations is None:
        activations = prompt_activations(lm, [fact for fact, *_ in chosen], needed, queries=queries,
                                         batch_size=batch_size)
    rows, start = [], 0
    for fact, positive, negative, variants in chosen:
        block = acts[start:start + len(positive) + len(negative)]
        start += len(positive) + len(negative)
        for variant, keys in variants.items():
            if not keys:
                continue
            values = block[:, [column[key] for key in keys]]
            scores = values.mean(axis=1)
            signed = (values * direction(activations.of([fact.id], keys))).mean(axis=1)
            pos, neg = scores[:len(positive)], scores[len(positive):]
            rows.append(row(STUDY, variant, fact.relation, fact.id, "sentence_positive", pos.mean()))
            rows.append(row(STUDY, variant, fact.relation, fact.id, "sentence_negative", neg.mean()))
            rows.append(row(STUDY, variant, fact.relation, fact.id, "sentence_auc", roc_auc(pos, neg)))
            rows.append(row(STUDY, variant, fact.relation, fact.id, "sentence_auc_signed",
                            roc_auc(signed[:len(positive)], signed[len(positive):])))
    return rows
