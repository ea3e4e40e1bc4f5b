"""All studies in one call, sharing the encoded prompts and the generic-neuron list.

Study names (as stored in the atlas's results table): ``suppress_amplify``, ``generic``, ``layers``,
``discrimination``. The generic neurons are always computed (it is a count), because the other studies report
their numbers with and without them; the ``generic`` study stores the flags and probes each generic neuron alone.
Besides the studies' own rows, rows with variant ``params`` (no relation, no fact) record the settings (seed,
other facts, generic share, probed neurons).

Example:
    >>> results = run_studies(lm, facts, neurons_by_fact, baseline_by_fact)
    >>> summarize(results["suppress_amplify"], "kn", "suppress").mean
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from kneuron.attribution.types import Neuron
from kneuron.errors import KneuronError
from kneuron.facts.fact import Fact
from kneuron.models.language_model import LanguageModel
from kneuron.studies.discrimination import discrimination
from kneuron.studies.generic import (
    coarse_generic_neurons,
    coarse_rows,
    generic_neurons,
    generic_rows,
    probe_generic,
    word_scores,
)
from kneuron.studies.layer_distribution import layer_distribution
from kneuron.studies.metrics import row
from kneuron.studies.suppress_amplify import encode_facts, suppress_amplify

STUDIES = ("suppress_amplify", "generic", "layers", "discrimination")

def run_studies(
    lm: LanguageModel,
    facts: Sequence[Fact],
    neurons_by_fact: Mapping[str, Sequence[Neuron]],
    baseline_by_fact: Mapping[str, Sequence[Neuron]] | None = None,
    *,
    studies: Sequence[str] = STUDIES,
    generic_share: float = 0.1,
    other_facts: int = 5,
    probe_neurons: int = 3,
    seed: int = 0,
    sentences: Callable[[Fact], tuple[Sequence[str], Sequence[str]]] | None = None,
    coarse_by_fact: Mapping[str, Sequence[Sequence[Neuron]]] | None = None,
    on_study: Callable[[str], None] | None = None,
    on_fact: Callable[[Fact], None] | None = None,
    queries: Mapping[str, Sequence] | None = None,
    generic: Sequence | None = None,
) -> dict[str, list[dict]]:
    """Run ``studies`` and return ``{study: rows}``.

    Args:
        neurons_by_fact: refined knowledge neurons by fact id (facts missing here have none).
        baseline_by_fact: the activation-baseline neurons by fact id (the layers and discrimination studies
            compare against them; skipped there when None).
        generic_share: neurons in the sets of more than this share of the facts are generic.
        other_facts: facts of other relations used to measure suppress/amplify elsewhere.
        probe_neurons: how many generic neurons (the most shared first) are probed alone.
        seed: seeds the random controls and the draw of other facts.
        sentences: ``fact -> (stating, subject-only)`` sentences (the built-in ones by default).
        coarse_by_fact: each fact's coarse neurons per prompt; when given, the generic study also flags neurons
            that are coarse in more than ``generic_share`` of all prompts, and probes up to ``probe_neurons`` of
            alone those most tied to one last word before the answer (see
            :func:`kneuron.studies.generic.word_scores`).
        on_study: called with each study's name before it runs (status).
        on_fact: called after each fact of the suppress/amplify study (progress).
        queries, generic: the encoded prompts (:func:`encode_facts`) and generic neurons, when the caller already
            has them (the runner shares them between the studies of one command).
    """
    unknown = [s for s in studies if s not in STUDIES]
    if unknown:
        raise KneuronError(f"Unknown stud{'y' if len(unknown) == 1 else 'ies'} {unknown}; choose from {STUDIES}.")
    neurons_by_fact = {fact.id: list(neurons_by_fact.get(fact.id, ())) for fact in facts}
    generic = list(generic) if generic is not None else generic_neurons(neurons_by_fact, share=generic_share)
    needs_queries = any(s in studies for s in ("suppress_amplify", "generic", "discrimination"))
    if queries is None:
        queries = encode_facts(lm, facts) if needs_queries else {}
    results: dict[str, list[dict]] = {}
    for study in STUDIES:
        if study not in studies:
            continue
        if on_study:
            on_study(study)
        if study == "suppress_amplify":
            results[study] = suppress_amplify(lm, facts, neurons_by_fact, generic=generic, other_facts=other_facts,
                                              seed=seed, queries=queries, on_fact=on_fact)
            results[study] += [row(study, "params", "", "", "seed", seed),
                               row(study, "params", "", "", "other_facts", other_facts),
                               row(study, "params", "", "", "generic_share", generic_share)]
        elif study == "generic":
            coarse = coarse_generic_neurons(coarse_by_fact, share=generic_share) if coarse_by_fact else []
            # probe the most shared knowledge neurons, and the coarse neurons most tied to one last word
            scores = word_scores(coarse, facts, coarse_by_fact) if coarse_by_fact else {}
            by_word = sorted((g for g in coarse if g.key not in {n.key for n in generic[:probe_neurons]}),
                             key=lambda g: (-scores[g.key][1], -g.facts, g.key))
            probed = [g.key for g in generic[:probe_neurons]] + [g.key for g in by_word[:probe_neurons]]
            results[study] = generic_rows(generic, generic_share) + probe_generic(
                lm, facts, neurons_by_fact, probed, max_neurons=len(probed), queries=queries)
            if coarse_by_fact:
                results[study] += coarse_rows(coarse, facts, coarse_by_fact)
            results[study].append(row(study, "params", "", "", "probe_neurons", probe_neurons))
        elif study == "layers":
            results[study] = layer_distribution(neurons_by_fact, lm.n_layers, baseline_by_fact,
                                                relations={fact.id: fact.relation for fact in facts},
                                                generic=generic)
        else:
            results[study] = discrimination(lm, facts, neurons_by_fact, baseline_by_fact, sentences=sentences,
                                            generic=generic, queries=queries)
    return results
