"""How specific an estimator's refined neurons are: what suppressing them does to facts of *other* relations, and
how many of them are generic (shared by many facts), for the ``estimators`` study
(:mod:`kneuron.studies.estimator_agreement`).

An estimator whose neurons suppress their own fact as strongly as exact IG's may still pick neurons that matter for
everything (on 38 unseen SmolLM2 facts, gradient x activation's neurons lowered other relations' facts twice as
much as IG's), so "they matter as much" needs the specificity beside it:

* :func:`other_suppressions`: per fact, the mean Δp/p on one prompt of each of ``count`` facts of other relations
  when the fact's neurons are set to 0 at each prompt's answer position; the other facts and prompts are drawn
  exactly as the suppress / amplify study draws them (:func:`~kneuron.studies.suppress_amplify.
  other_relation_prompts` with :func:`~kneuron.studies.metrics.fact_rng` of the seed and the fact id), so IG's
  values equal that study's ``suppress_other`` of variant ``kn`` on the same facts (tested). One
  :func:`~kneuron.studies.metrics.patched_probabilities` call per fact measures every estimator's set together.
* :func:`generic_measures`: the generic study's definition (:func:`~kneuron.studies.generic.generic_neurons`: a
  neuron refined for more than ``share`` of the facts, and for at least two) applied to one estimator's refined
  sets over the compared facts; per fact the share of its refined neurons that are generic; over all facts how
  many generic neurons there are and in which share of the facts the most shared neuron is.

Example:
    >>> other = other_suppressions(lm, facts, {"ig": ig_sets, "gxa": gxa_sets}, queries, seed=0, count=5)
    >>> other["gxa"]["capital/France"]          # e.g. -0.25: other relations' answers fall by a quarter
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from kneuron.facts.encoding import EncodedQuery
from kneuron.facts.fact import Fact
from kneuron.models.hooks import suppress_patches
from kneuron.models.language_model import LanguageModel
from kneuron.studies.generic import generic_neurons
from kneuron.studies.metrics import NeuronKey, fact_rng, patched_probabilities, relative_change
from kneuron.studies.suppress_amplify import other_relation_prompts


def other_suppressions(lm: LanguageModel, facts: Sequence[Fact],
                       sets: Mapping[str, Mapping[str, Sequence[NeuronKey]]],
                       queries: Mapping[str, Sequence[EncodedQuery]], *, seed: int, count: int,
                       batch_size: int = 64) -> dict[str, dict[str, float]]:
    """``{label: {fact id: Δp/p}}``: the mean relative change of the other relations' prompts drawn for each fact
    (see the module docstring) when the fact's neurons of ``sets[label]`` are set to 0. Facts without neurons
    under a label, and facts with no other relation among ``facts`` (or ``count`` 0), have no value."""
    found: dict[str, dict[str, float]] = {label: {} for label in sets}
    if count <= 0:
        return found
    for fact in facts:
        others = other_relation_prompts(fact, facts, count, fact_rng(seed, fact.id))
        elsewhere = [queries[other.id][p] for other, p in others]
        chosen = {label: list(by_fact.get(fact.id, ())) for label, by_fact in sets.items()}
        chosen = {label: keys for label, keys in chosen.items() if keys}
        if not elsewhere or not chosen:
            continue
        distinct = list(dict.fromkeys(tuple(keys) for keys in chosen.values()))
        probabilities = patched_probabilities(lm, elsewhere, [[]] + [suppress_patches(keys) for keys in distinct],
                                              batch_size=batch_size)
        measured = {keys: float(relative_change(probabilities[0], after).mean())
                    for keys, after in zip(distinct, probabilities[1:], strict=True)}
        for label, keys in chosen.items():
            found[label][fact.id] = measured[tuple(keys)]
    return found


def generic_measures(neurons_by_fact: Mapping[str, Sequence[NeuronKey]], share: float,
                     ) -> tuple[dict[str, float], int, float]:
    """(per fact with neurons: the share of its refined neurons that are generic; how many generic neurons;
    the share of the facts whose refined set holds the most shared neuron, NaN without neurons), with the generic
    study's definition at ``share`` over the facts of ``neurons_by_fact`` (those without neurons count in the
    denominator)."""
    generic = {g.key for g in generic_neurons(neurons_by_fact, share=share)}
    fractions = {fact_id: sum(key in generic for key in keys) / len(keys)
                 for fact_id, keys in neurons_by_fact.items() if keys}
    counts = Counter(key for keys in neurons_by_fact.values() for key in set(keys))
    most = max(counts.values()) / len(neurons_by_fact) if counts else float(np.nan)
    return fractions, len(generic), most


__all__ = ["generic_measures", "other_suppressions"]
