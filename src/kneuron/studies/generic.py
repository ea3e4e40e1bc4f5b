"""Generic neurons: units that are knowledge neurons of many unrelated facts, and what they really respond to.

A neuron that is among the knowledge neurons of more than ``share`` (10%) of the facts is *generic*: it cannot
encode any one fact. On SmolLM2-135M a hand check found a layer-0 neuron that fires whenever the prompt ends in
" is" and is selected for every fact whose prompts mostly end that way; zeroing it alone lowers the probability
of the correct answer of unrelated facts whose prompt ends in " is". Averages over facts that include such a
neuron mix its effect into every fact's "knowledge" effect, so the studies report their numbers with and without
generic neurons, and :func:`probe_generic` measures each generic neuron on its own, grouped by the last word
before the answer.

Example:
    >>> found = generic_neurons(neurons_by_fact, share=0.1)
    >>> [str(g) for g in found]                       # e.g. ['L0.N1011']
    >>> rows = probe_generic(lm, facts, neurons_by_fact, found)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kneuron.attribution.types import Neuron
from kneuron.errors import KneuronError
from kneuron.facts.encoding import EncodedQuery
from kneuron.facts.fact import Fact, Prompt
from kneuron.models.hooks import suppress_patches
from kneuron.models.language_model import LanguageModel
from kneuron.studies.metrics import NeuronKey, activations_at, patched_probabilities, relative_change, row
from kneuron.studies.suppress_amplify import encode_facts, keys_of

STUDY = "generic"


@dataclass(frozen=True)
class GenericNeuron:
    """A neuron that is a knowledge neuron of ``facts`` facts, ``share`` of all; prints as ``L0.N1011``."""

    layer: int
    index: int
    facts: int
    share: float

    @property
    def key(self) -> NeuronKey:
        return (self.layer, self.index)

    def __str__(self) -> str:
        return f"L{self.layer}.N{self.index}"


def generic_neurons(neurons_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]], share: float = 0.1,
                    min_facts: int = 2) -> list[GenericNeuron]:
    """Neurons that are knowledge neurons of more than ``share`` of the facts (and of at least ``min_facts``),
    most shared first.

    The denominator is every fact in ``neurons_by_fact``, also those without neurons.
    """
    if not 0.0 <= share < 1.0:
        raise KneuronError(f"The generic share must be a fraction in [0, 1); got {share}.")
    total = len(neurons_by_fact)
    counts = Counter(key for neurons in neurons_by_fact.values() for key in keys_of(neurons))
    found = [GenericNeuron(layer, index, count, count / total) for (layer, index), count in counts.items()
             if count > share * total and count >= min_facts]
    return sorted(found, key=lambda g: (-g.facts, g.layer, g.index))


def generic_rows(found: Sequence[GenericNeuron], share: float) -> list[dict]:
    """Rows that flag each generic neuron (variant = its name): how many facts include it, and which share; and the
    threshold ``share`` itself (variant ``params``, metric ``generic_share``)."""
    rows = [row(STUDY, "params", "", "", "generic_share", share)]
    for g in found:
        rows.append(row(STUDY, str(g), "", "", "facts", g.facts))
        rows.append(row(STUDY, str(g), "", "", "share", g.share))
    return rows


def coarse_generic_neurons(coarse_by_fact: Mapping[str, Sequence[Sequence[Neuron | NeuronKey]]], share: float = 0.1,
                           min_prompts: int = 2) -> list[GenericNeuron]:
    """Neurons that are *coarse* neurons (one prompt's attribution above the threshold) of more than ``share`` of all
    prompts, over all facts, most frequent first; ``facts`` and ``share`` of the result count prompts.

    A neuron can sit in the coarse sets of every prompt ending in " is" and still miss the refined sets of facts
    whose templates mostly end otherwise; this finds it.
    """
    if not 0.0 <= share < 1.0:
        raise KneuronError(f"The generic share must be a fraction in [0, 1); got {share}.")
    bags = [prompt for bag in coarse_by_fact.values() for prompt in bag]
    counts = Counter(key for prompt in bags for key in keys_of(prompt))
    total = len(bags)
    found = [GenericNeuron(layer, index, count, count / total) for (layer, index), count in counts.items()
             if count > share * total and count >= min_prompts]
    return sorted(found, key=lambda g: (-g.facts, g.layer, g.index))


def _prompt_words(facts: Sequence[Fact], coarse_by_fact: Mapping[str, Sequence[Sequence[Neuron | NeuronKey]]],
                  ) -> list[tuple[str, set[NeuronKey]]]:
    words = []
    for fact in facts:
        bag = coarse_by_fact.get(fact.id, ())
        for prompt, coarse in zip(fact.prompts(), bag, strict=False):
            words.append((last_word(prompt), set(keys_of(coarse))))
    return words


def word_scores(found: Sequence[GenericNeuron | NeuronKey], facts: Sequence[Fact],
                coarse_by_fact: Mapping[str, Sequence[Sequence[Neuron | NeuronKey]]],
                ) -> dict[NeuronKey, tuple[str, float]]:
    """For each neuron, the last word before the answer that best explains where it is coarse, and how well:
    (share of the prompts ending in the word where it is coarse) x (share of its coarse prompts that end in the
    word). 1.0 means: coarse in every prompt ending in the word, and in no other."""
    words = _prompt_words(facts, coarse_by_fact)
    totals = Counter(w for w, _ in words)
    scores = {}
    for key in keys_of(found):
        counts = Counter(w for w, keys in words if key in keys)
        n = sum(counts.values())
        best = max(counts, key=lambda w: (counts[w] / totals[w]) * (counts[w] / n), default="")
        scores[key] = (best, (counts[best] / totals[best]) * (counts[best] / n) if best else 0.0)
    return scores


def coarse_rows(found: Sequence[GenericNeuron], facts: Sequence[Fact],
                coarse_by_fact: Mapping[str, Sequence[Sequence[Neuron | NeuronKey]]]) -> list[dict]:
    """Rows for coarse-generic neurons (variant = name): ``coarse_prompts`` and ``coarse_share`` over all prompts,
    per last word ``w`` before the answer ``coarse:w``, the number of prompts ending in ``w`` whose coarse set has
    it, and ``word_score:w`` for the best word (see :func:`word_scores`); variant ``prompts`` holds ``prompts:w``,
    how many prompts end in ``w``."""
    words = _prompt_words(facts, coarse_by_fact)
    scores = word_scores(found, facts, coarse_by_fact)
    rows = [row(STUDY, "prompts", "", "", f"prompts:{w}", n) for w, n in Counter(w for w, _ in words).items()]
    for g in found:
        rows.append(row(STUDY, str(g), "", "", "coarse_prompts", g.facts))
        rows.append(row(STUDY, str(g), "", "", "coarse_share", g.share))
        for w, n in Counter(w for w, keys in words if g.key in keys).items():
            rows.append(row(STUDY, str(g), "", "", f"coarse:{w}", n))
        word, score = scores[g.key]
        rows.append(row(STUDY, str(g), "", "", f"word_score:{word}", score))
    return rows


def last_word(prompt: Prompt) -> str:
    """The word just before the answer: 'is' for 'The capital of France is [Y].'."""
    words = prompt.prefix.rstrip(" ").split()
    return words[-1] if words else ""


def probe_generic(
    lm: LanguageModel,
    facts: Sequence[Fact],
    neurons_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]],
    found: Sequence[GenericNeuron | NeuronKey],
    *,
    max_neurons: int = 3,
    batch_size: int = 64,
    queries: Mapping[str, list[EncodedQuery]] | None = None,
) -> list[dict]:
    """Each generic neuron on its own, on every prompt of every fact, grouped by the last word before the answer.

    Rows (variant = the neuron's name, per fact): ``member`` (1 when it is one of the fact's knowledge neurons),
    and for each last word ``w`` among the fact's prompts ``suppress_alone:w`` (mean relative change of the
    correct probability when only this neuron is zeroed at the answer position) and ``activation:w`` (its mean
    activation there).
    """
    keys = keys_of(found)[:max_neurons]
    if not keys:
        return []
    queries = encode_facts(lm, facts, queries)
    flat = [(fact, prompt, query) for fact in facts
            for prompt, query in zip(fact.prompts(), queries[fact.id], strict=True)]
    all_queries = [q for _, _, q in flat]
    # the clean probabilities and each neuron alone zeroed, every prompt's prefix run once for all of them
    probabilities = patched_probabilities(lm, all_queries, [[]] + [suppress_patches([key]) for key in keys],
                                          batch_size=batch_size)
    acts = activations_at(lm, [(q.input_ids, q.position) for q in all_queries], keys, batch_size=batch_size)
    rows = []
    for column, key in enumerate(keys):
        name = f"L{key[0]}.N{key[1]}"
        change = relative_change(probabilities[0], probabilities[column + 1])
        groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for i, (fact, prompt, _) in enumerate(flat):
            groups[fact.id][last_word(prompt)].append(i)
        for fact in facts:
            member = key in set(keys_of(neurons_by_fact.get(fact.id, ())))
            rows.append(row(STUDY, name, fact.relation, fact.id, "member", float(member)))
            for word, members in groups[fact.id].items():
                rows.append(row(STUDY, name, fact.relation, fact.id, f"suppress_alone:{word}",
                                float(np.mean(change[members]))))
                rows.append(row(STUDY, name, fact.relation, fact.id, f"activation:{word}",
                                float(np.mean(acts[members, column]))))
    return rows


#: the suffixes of a probed neuron's split ``suppress_alone:w`` aggregates: the facts that do not count it among
#: their knowledge neurons, and those that do
UNRELATED, MEMBERS = "@unrelated", "@members"


def by_word_rows(rows: Sequence[dict]) -> list[dict]:
    """Each probed neuron's ``suppress_alone:w`` rows again, with the metric suffixed by the fact's membership
    (:data:`UNRELATED`, :data:`MEMBERS`): what the stored aggregates of the per-last-word means are made from, so
    that the report's table (facts without it, facts with it) reads an interval for each."""
    member = {(r["variant"], r["fact_id"]): r["value"] > 0.5 for r in rows if r["metric"] == "member"}
    return [{**r, "metric": r["metric"] + (MEMBERS if member.get((r["variant"], r["fact_id"])) else UNRELATED)}
            for r in rows if r.get("fact_id") and str(r["metric"]).startswith("suppress_alone:")]
