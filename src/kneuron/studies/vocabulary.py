"""What a fact's knowledge neurons write (Geva et al. 2022): does a knowledge neuron's value slot, projected onto the
vocabulary, promote the fact's own answer, or something else (a format, a topic)?

For each fact with knowledge neurons, each neuron's value slot is projected onto the vocabulary
(:mod:`kneuron.interventions.vocabulary`: unembedding × slot through the final norm's weight), with the sign of the
neuron's mean activation at the answer position over the fact's prompts (a neuron that is negative there writes
−slot, so what it promotes is what its slot suppresses). The answer token is the **first** token of the fact's
answer as the model tokenises it after the fact's first prompt (:func:`kneuron.interventions.update.answer_ids`, the
token the update rule writes). Its rank among a neuron's promoted tokens is 0 when it is the token the neuron raises
most; its suppressed rank is 0 when it is the token the neuron lowers most.

The control (variant ``random``): as many random neurons as the fact has, one from the layer of each knowledge
neuron, never one of them (:func:`~kneuron.studies.suppress_amplify.random_control`), drawn with
:func:`~kneuron.studies.metrics.fact_rng` (``seed``, fact id): the same draw whatever the order of the facts.
Their signs come from their own activations on the fact's prompts, by the same rule.

Rows (the atlas's long format, ``study="vocabulary"``, relation = the fact's relation):

* variants ``kn`` and ``random``, per fact: ``neurons``; ``answer_top10`` / ``answer_top100`` (1 when at least one of
  the fact's neurons has the answer among its 10 / 100 most promoted tokens, else 0; the bounds are ``top`` and
  ``wide``), ``suppressed_top10`` / ``suppressed_top100`` (the same among the most suppressed tokens), ``best_rank``
  (the best answer rank over the fact's neurons), ``median_rank`` (the median over them), ``negative`` (the share of
  its neurons with a negative activation);
* variants ``kn_neuron`` and ``random_neuron``, per fact, one row per neuron: ``answer_rank`` (its answer rank),
  ``negative`` (1 or 0) and ``raises_answer`` (1 when its signed projection gives the answer a positive logit: it
  pushes the answer up, at any rank), so that means and medians over all (fact, neuron) pairs are a
  :func:`summarize` away;
* variant ``params`` (no fact): ``seed``, ``top``, ``wide``, ``vocab_size`` (how many tokens were ranked).

The top tokens themselves are in the :class:`FactVocabulary` values of :func:`study_vocabularies`; ``kneuron study
vocabulary`` stores the knowledge neurons' in the atlas (:mod:`kneuron.store.vocabulary`).

Example:
    >>> rows = vocabulary_study(lm, atlas.facts(), atlas.all_refined(), seed=0)
    >>> summarize(rows, "kn", "answer_top10").mean, summarize(rows, "random", "answer_top10").mean
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kneuron.attribution.types import Neuron
from kneuron.facts.encoding import EncodedQuery
from kneuron.facts.fact import Fact
from kneuron.interventions.update import answer_ids
from kneuron.interventions.vocabulary import (
    NeuronVocabulary,
    activation_signs,
    neuron_vocabulary,
    normalised_unembedding,
)
from kneuron.models.language_model import LanguageModel
from kneuron.studies.metrics import NeuronKey, activations_at, fact_rng, row, summarize
from kneuron.studies.suppress_amplify import encode_facts, keys_of, random_control

STUDY = "vocabulary"
#: the answer counts as promoted by a neuron within its ``TOP`` (and ``WIDE``) most promoted tokens
TOP, WIDE = 10, 100
VARIANTS = ("kn", "random")


@dataclass(frozen=True)
class FactVocabulary:
    """What one fact's knowledge neurons and its random control write.

    Attributes:
        fact: the fact.
        answer_id: the first token of its answer (see the module docstring).
        knowledge: one entry per knowledge neuron, in the fact's order (its slot times its sign).
        random: the random control, one entry per random neuron.
        activations: each neuron's mean activation at the answer position over the fact's prompts (both sets).
    """

    fact: Fact
    answer_id: int
    knowledge: tuple[NeuronVocabulary, ...]
    random: tuple[NeuronVocabulary, ...]
    activations: Mapping[NeuronKey, float]

    def variant(self, name: str) -> tuple[NeuronVocabulary, ...]:
        return self.knowledge if name == "kn" else self.random


def mean_activations(lm: LanguageModel, queries: Sequence[EncodedQuery], keys: Sequence[NeuronKey],
                     ) -> list[float]:
    """Each neuron's activation at the answer position, averaged over ``queries`` (one batched pass)."""
    if not keys or not queries:
        return [0.0] * len(keys)
    values = activations_at(lm, [(q.input_ids, q.position) for q in queries], list(keys))
    return [float(v) for v in values.mean(axis=0)]


def fact_vocabulary(lm: LanguageModel, fact: Fact, neurons: Sequence[Neuron | NeuronKey], *, seed: int = 0,
                    top: int = TOP, queries: Sequence[EncodedQuery] | None = None) -> FactVocabulary:
    """The projection of one fact's knowledge neurons and of its random control (see the module docstring).

    Raises:
        VocabularyError: the model's value slots have no projection (ALBERT's factorised embeddings).
    """
    normalised_unembedding(lm)  # refuses a model without a projection before anything else does, in its own words
    kn = keys_of(neurons)
    control = random_control(kn, lm.n_neurons, fact_rng(seed, fact.id))
    if queries is None:
        queries = encode_facts(lm, [fact])[fact.id]
    every = list(dict.fromkeys(kn + control))
    means = dict(zip(every, mean_activations(lm, queries, every), strict=True))
    answer = answer_ids(lm, fact.object, fact.prompts()[0])[0]
    projected = neuron_vocabulary(lm, every, activation_signs(means[k] for k in every), top=top, answer_id=answer)
    by_key = {v.key: v for v in projected}
    return FactVocabulary(fact, answer, tuple(by_key[k] for k in kn), tuple(by_key[k] for k in control), means)


def study_vocabularies(lm: LanguageModel, facts: Sequence[Fact], neurons_by_fact: Mapping[str, Sequence[Neuron]],
                       *, seed: int = 0, top: int = TOP,
                       queries: Mapping[str, Sequence[EncodedQuery]] | None = None,
                       on_fact: Callable[[Fact], None] | None = None) -> list[FactVocabulary]:
    """:func:`fact_vocabulary` of every fact with knowledge neurons (the others are skipped), in the facts' order."""
    found = []
    for fact in facts:
        neurons = neurons_by_fact.get(fact.id, ())
        if neurons and fact.templates:
            given = queries.get(fact.id) if queries is not None else None
            found.append(fact_vocabulary(lm, fact, neurons, seed=seed, top=top, queries=given))
        if on_fact:
            on_fact(fact)
    return found


def vocabulary_rows(vocabularies: Sequence[FactVocabulary], *, seed: int = 0, top: int = TOP, wide: int = WIDE,
                    ) -> list[dict]:
    """The study's rows (see the module docstring) from :func:`study_vocabularies`' values."""
    rows: list[dict] = []
    vocab_size = 0
    for found in vocabularies:
        fact = found.fact
        for variant in VARIANTS:
            neurons = found.variant(variant)
            rows.append(row(STUDY, variant, fact.relation, fact.id, "neurons", len(neurons)))
            if not neurons:
                continue
            vocab_size = neurons[0].vocab_size
            ranks = [v.answer_rank for v in neurons]
            low = [v.answer_suppressed_rank for v in neurons]
            for name, value in (
                    (f"answer_top{top}", any(r < top for r in ranks)),
                    (f"answer_top{wide}", any(r < wide for r in ranks)),
                    (f"suppressed_top{top}", any(r < top for r in low)),
                    (f"suppressed_top{wide}", any(r < wide for r in low)),
                    ("best_rank", min(ranks)), ("median_rank", float(np.median(ranks))),
                    ("negative", sum(v.sign < 0 for v in neurons) / len(neurons))):
                rows.append(row(STUDY, variant, fact.relation, fact.id, name, float(value)))
            for v in neurons:
                rows.append(row(STUDY, f"{variant}_neuron", fact.relation, fact.id, "answer_rank", v.answer_rank))
                rows.append(row(STUDY, f"{variant}_neuron", fact.relation, fact.id, "negative", float(v.sign < 0)))
                rows.append(row(STUDY, f"{variant}_neuron", fact.relation, fact.id, "raises_answer",
                                float(v.answer_logit > 0)))
    rows += [row(STUDY, "params", "", "", "seed", seed), row(STUDY, "params", "", "", "top", top),
             row(STUDY, "params", "", "", "wide", wide), row(STUDY, "params", "", "", "vocab_size", vocab_size)]
    return rows


def vocabulary_study(lm: LanguageModel, facts: Sequence[Fact], neurons_by_fact: Mapping[str, Sequence[Neuron]],
                     *, seed: int = 0, top: int = TOP, wide: int = WIDE,
                     queries: Mapping[str, Sequence[EncodedQuery]] | None = None,
                     on_fact: Callable[[Fact], None] | None = None) -> list[dict]:
    """The study's rows for ``facts`` (see the module docstring): ``vocabulary_rows(study_vocabularies(...))``.

    Args:
        neurons_by_fact: each fact's knowledge neurons by fact id (facts without any are skipped).
        seed: seeds the random control (with each fact's id).
        top, wide: the two bounds within which the answer counts as promoted (10 and 100).
        queries: the facts' encoded prompts by fact id (encoded when missing), where the activation signs are read.
        on_fact: called after each fact (progress).
    """
    found = study_vocabularies(lm, facts, neurons_by_fact, seed=seed, top=top, queries=queries, on_fact=on_fact)
    return vocabulary_rows(found, seed=seed, top=top, wide=wide)


def study_params(rows: Sequence[dict]) -> dict[str, float]:
    """The ``params`` rows as ``{metric: value}`` (``seed``, ``top``, ``wide``, ``vocab_size``)."""
    return {r["metric"]: r["value"] for r in rows if r["variant"] == "params"}


def vocabulary_summary(rows: Sequence[dict]) -> dict[str, dict[str, tuple[float, int]]]:
    """Per variant (``kn``, ``random``), ``{measure: (value, n)}``: the shares of facts with the answer promoted
    (suppressed) within ``top`` / ``wide`` (means of the 0/1 rows), the median over facts of the best rank, the
    median answer rank over all (fact, neuron) pairs, the shares of neurons that are negative and that raise the
    answer's logit, and the mean neurons per fact."""
    params = study_params(rows)
    top, wide = int(params.get("top", TOP)), int(params.get("wide", WIDE))
    out: dict[str, dict[str, tuple[float, int]]] = {}
    for variant in VARIANTS:
        entry: dict[str, tuple[float, int]] = {}
        for metric in (f"answer_top{top}", f"answer_top{wide}", f"suppressed_top{top}", f"suppressed_top{wide}",
                       "neurons"):
            summary = summarize(rows, variant, metric)
            entry[metric] = (summary.mean, summary.n)
        best = summarize(rows, variant, "best_rank")
        entry["best_rank"] = (best.median, best.n)
        pooled = summarize(rows, f"{variant}_neuron", "answer_rank")
        entry["neuron_rank"] = (pooled.median, pooled.n)
        for metric in ("negative", "raises_answer"):
            pooled = summarize(rows, f"{variant}_neuron", metric)
            entry[metric] = (pooled.mean, pooled.n)
        out[variant] = entry
    return out


def summary_figures(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str, str]]:
    """The summary's lines, ``(measure, knowledge neurons, random neurons of the same layers)``, for the terminal
    and the report alike: each mean over facts with its stored 95% interval, n and (the knowledge neurons) the
    paired p against the random control (:func:`~kneuron.studies.display.stored_figure`); the two medians as
    medians with their n (no interval is stored for a median)."""
    from kneuron.studies.display import stored_figure

    params = study_params(rows)
    top, wide = int(params.get("top", TOP)), int(params.get("wide", WIDE))
    summary = vocabulary_summary(rows)
    lines = []
    for metric, label, suffix, percent in (
            (f"answer_top{top}", f"facts: answer among a neuron's {top} most promoted tokens", "", True),
            (f"answer_top{wide}", f"facts: answer among a neuron's {wide} most promoted", "", True),
            (f"suppressed_top{top}", f"facts: answer among a neuron's {top} most suppressed", "", True),
            (f"suppressed_top{wide}", f"facts: answer among a neuron's {wide} most suppressed", "", True),
            ("best_rank", "median over facts of the best answer rank", None, False),
            ("neuron_rank", "median answer rank over (fact, neuron) pairs", None, False),
            ("raises_answer", "neurons that raise the answer's logit (at any rank)", "_neuron", True),
            ("negative", "neurons with a negative activation (slot taken as −slot)", "_neuron", True),
            ("neurons", "neurons per fact", "", False)):
        cells = []
        for variant in VARIANTS:
            if suffix is None:
                median, n = summary[variant][metric]
                cells.append(f"{median:.0f} (median), n = {n}" if n and math.isfinite(median) else "–")
            else:
                cells.append(stored_figure(aggregates, rows, STUDY, variant + suffix, metric, percent=percent,
                                           signed=False))
        lines.append((label, *cells))
    return lines


__all__ = ["STUDY", "TOP", "VARIANTS", "WIDE", "FactVocabulary", "fact_vocabulary", "mean_activations",
           "study_params", "study_vocabularies", "summary_figures", "vocabulary_rows", "vocabulary_study",
           "vocabulary_summary"]
