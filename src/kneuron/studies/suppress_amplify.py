"""The paper's suppress / amplify study: does switching a fact's knowledge neurons off (or doubling them) move the
probability of its correct answer, more than as many random neurons of the same layers do?

For each fact with knowledge neurons, and each prompt of the fact, the correct answer's (joint) probability is
measured as is and with the neurons patched **at the answer position only** (the position whose output predicts
the first answer token, i.e. the position attribution scored; as in the paper, which patches the activation at
the [MASK]): suppress sets them to 0, amplify multiplies them by ``factor`` (2). A fact's value is the mean over
its prompts of the paper's relative change (p_after - p_before) / p_before; the study's number is the mean over
facts, overall and per relation.

Variants (the ``variant`` column of the rows):

* ``kn``: the fact's knowledge neurons;
* ``random``: as many random neurons drawn from the same layers (one per knowledge neuron, from its layer, never a
  knowledge neuron of the fact), seeded by ``seed`` and the fact id, so results do not depend on fact order;
* ``kn_no_generic`` / ``random_no_generic``: the same with the generic neurons (see :mod:`.generic`) left out;
  facts left with no neuron are skipped there (the row ``neurons`` says how many remained).

Metrics (the ``metric`` column): ``suppress``, ``amplify`` on the fact's own prompts; ``suppress_other``,
``amplify_other`` on one prompt of each of ``other_facts`` facts of *other* relations (same neurons, each prompt
patched at its own answer position), facts and prompts drawn with the same seeded generator; ``neurons`` (how
many were patched) and ``p_before`` (mean clean probability of the own prompts).

Example:
    >>> rows = suppress_amplify(lm, facts, {f.id: kn.neurons for f, kn in found})
    >>> summarize(rows, "kn", "suppress").mean      # e.g. -0.29 in the paper (BERT-base)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from kneuron.attribution.types import Neuron
from kneuron.facts.encoding import EncodedQuery, encode
from kneuron.facts.fact import Fact
from kneuron.models.hooks import scale_patches, suppress_patches
from kneuron.models.language_model import LanguageModel
from kneuron.studies.metrics import NeuronKey, fact_rng, patched_probabilities, relative_change, row

STUDY = "suppress_amplify"
VARIANTS = ("kn", "random", "kn_no_generic", "random_no_generic")


def keys_of(neurons: Iterable[Neuron | NeuronKey]) -> list[NeuronKey]:
    """``(layer, index)`` of each neuron (anything with a ``key``, or a pair), duplicates removed, order kept."""
    return list(dict.fromkeys(n.key if hasattr(n, "key") else (int(n[0]), int(n[1])) for n in neurons))


def random_control(neurons: Sequence[NeuronKey], n_neurons: int, rng: np.random.Generator,
                   exclude: Iterable[NeuronKey] = ()) -> list[NeuronKey]:
    """One random neuron per neuron of ``neurons``, from the same layer, distinct, none in ``neurons`` or
    ``exclude``."""
    taken = set(neurons) | set(exclude)
    chosen: list[NeuronKey] = []
    for layer, _ in neurons:
        free = [i for i in range(n_neurons) if (layer, i) not in taken]
        if not free:
            continue
        pick = (layer, int(free[int(rng.integers(len(free)))]))
        chosen.append(pick)
        taken.add(pick)
    return chosen


def encode_facts(lm: LanguageModel, facts: Sequence[Fact],
                 known: Mapping[str, list[EncodedQuery]] | None = None) -> dict[str, list[EncodedQuery]]:
    """Every prompt of every fact, encoded with the fact's answer: ``{fact_id: [query, ...]}``. ``known``: queries
    already encoded, by fact id; they are kept (a new dict) and only the facts missing there are encoded."""
    found = dict(known) if known is not None else {}
    found.update({fact.id: [encode(lm, prompt, fact.object) for prompt in fact.prompts()]
                  for fact in facts if fact.id not in found})
    return found


def other_relation_facts(fact: Fact, facts: Sequence[Fact], count: int, rng: np.random.Generator) -> list[Fact]:
    """Up to ``count`` facts of relations other than ``fact``'s, drawn without replacement (from the pool sorted by
    id, so that the draw does not depend on the order of ``facts``)."""
    pool = sorted((f for f in facts if f.relation != fact.relation), key=lambda f: f.id)
    if count <= 0 or not pool:
        return []
    picks = rng.choice(len(pool), size=min(count, len(pool)), replace=False)
    return [pool[int(i)] for i in sorted(picks)]


def other_relation_prompts(fact: Fact, facts: Sequence[Fact], count: int, rng: np.random.Generator,
                           ) -> list[tuple[Fact, int]]:
    """Up to ``count`` (fact, prompt index) pairs: facts of other relations, one drawn prompt each."""
    return [(other, int(rng.integers(len(other.templates))))
            for other in other_relation_facts(fact, facts, count, rng) if other.templates]


def suppress_amplify(
    lm: LanguageModel,
    facts: Sequence[Fact],
    neurons_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]],
    *,
    generic: Iterable[Neuron | NeuronKey] = (),
    factor: float = 2.0,
    other_facts: int = 8,
    seed: int = 0,
    batch_size: int = 64,
    queries: Mapping[str, list[EncodedQuery]] | None = None,
    on_fact: Callable[[Fact], None] | None = None,
) -> list[dict]:
    """Run the study on ``facts`` (those without knowledge neurons are skipped) and return long-format rows.

    Args:
        lm: the model.
        facts: the facts; ``other_facts`` are drawn from these too.
        neurons_by_fact: each fact's knowledge neurons, by fact id.
        generic: neurons to leave out in the ``*_no_generic`` variants.
        factor: the amplify factor (the paper doubles).
        other_facts: how many facts of other relations (one prompt each) measure the effect elsewhere (0 to skip).
        seed: seeds the random controls and the choice of other facts.
        batch_size: rows (one prompt under one patch set) per forward pass.
        queries: pre-encoded prompts by fact id (computed when missing).
        on_fact: called after each fact (progress).

    A fact's patch sets and its clean probabilities are measured on its own and its other prompts in one
    :func:`~.metrics.patched_probabilities` call (a causal prompt's tokens before the answer position run once).
    """
    generic_keys = set(keys_of(generic))
    queries = encode_facts(lm, facts, queries)
    rows: list[dict] = []
    for fact in facts:
        kn = keys_of(neurons_by_fact.get(fact.id, ()))
        if not kn or not queries[fact.id]:
            if on_fact:
                on_fact(fact)
            continue
        rng = fact_rng(seed, fact.id)
        others = other_relation_prompts(fact, facts, other_facts, rng)
        kept = [key for key in kn if key not in generic_keys]
        random_keys = random_control(kn, lm.n_neurons, rng)
        sets = {
            "kn": kn,
            "random": random_keys,
            "kn_no_generic": kept,
            # without generic neurons in the fact's set, the no-generic variants are the plain ones
            "random_no_generic": random_keys if kept == kn else random_control(kept, lm.n_neurons, rng, exclude=kn),
        }
        own = queries[fact.id]
        elsewhere = [queries[other.id][p] for other, p in others]
        # every distinct (neurons, op) of the fact, and the clean probabilities, on all its prompts in one call
        patched = list(dict.fromkeys((tuple(keys), op) for keys in sets.values() if keys
                                     for op in ("suppress", "amplify")))
        patch_sets = [[]] + [suppress_patches(keys) if op == "suppress" else scale_patches(keys, factor)
                             for keys, op in patched]
        probabilities = patched_probabilities(lm, own + elsewhere, patch_sets, batch_size=batch_size)
        own_before, other_before = probabilities[0, :len(own)], probabilities[0, len(own):]
        measured = dict(zip(patched, probabilities[1:], strict=True))
        for variant, keys in sets.items():
            rows.append(row(STUDY, variant, fact.relation, fact.id, "neurons", len(keys)))
            if not keys:
                continue
            for op in ("suppress", "amplify"):
                after = measured[tuple(keys), op]
                rows.append(row(STUDY, variant, fact.relation, fact.id, op,
                                relative_change(own_before, after[:len(own)]).mean()))
                if elsewhere:
                    rows.append(row(STUDY, variant, fact.relation, fact.id, f"{op}_other",
                                    relative_change(other_before, after[len(own):]).mean()))
        rows.append(row(STUDY, "kn", fact.relation, fact.id, "p_before", own_before.mean()))
        if on_fact:
            on_fact(fact)
    return rows
