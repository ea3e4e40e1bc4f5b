"""Knowledge neurons across languages (Chen et al., AAAI 2024): which of a fact's knowledge neurons do its language
versions share, where do the shared and the language-specific ones sit, and does switching off one language's
neurons take the fact away in the other languages too?

One fact in several languages is several facts with ids ``"{relation}:{subject}@{language}"`` (see
:mod:`kneuron.facts.languages`); their common :func:`~kneuron.facts.languages.fact_key` groups them. The study takes
the keys with knowledge neurons computed (done) in at least two languages. For one key, with N(l) the refined
neurons of its version in language l:

* **overlap**: the union of the N(l); *shared by all* (in every language's set), *shared* (in at least two),
  *specific* (in exactly one), their counts and their shares of the union, and the neurons specific to each
  language; the **Jaccard** index |N(a) ∩ N(b)| / |N(a) ∪ N(b)| of every language pair (NaN when both are empty);
* **layers**: how many shared-by-all, shared and specific neurons sit in each layer, over all keys;
* **cross-lingual suppression**: N(s) is set to 0 at the answer position (as in the suppress / amplify study,
  :mod:`.suppress_amplify`) and the correct answer's probability of every language t of the key is measured on t's
  own prompts with t's own answer; the value is the mean over t's prompts of (p_after − p_before) / p_before.
  s = t is the paper's own-language suppression. Variants: ``kn`` (all of N(s)), ``random`` (as many random neurons,
  one from the layer of each, none a knowledge neuron of any of the key's languages; seeded by ``seed`` and the
  source fact's id), ``kn_shared`` (the neurons of N(s) also in another language's set) and ``kn_specific`` (those
  in N(s) only); a variant with no neurons is skipped.

Rows (the atlas's long format, ``study="languages"``; relation = the fact's relation):

* variant ``kn``, fact id ``key@l``, metric ``neurons``: |N(l)|; metric ``p_before``: mean clean probability;
* variant ``overlap``, fact id ``key``: metrics ``languages``, ``union``, ``shared_all``, ``shared``, ``specific``,
  ``share_shared_all``, ``share_shared``, ``share_specific`` (NaN when the union is empty), ``specific@l``;
* variant ``jaccard``, fact id ``key``, metric ``a|b`` (the two codes in :func:`language_order`);
* variant ``shared_all`` / ``shared`` / ``specific``, no fact, metric ``layer:L``: counts over all keys;
* variants ``kn``, ``random``, ``kn_shared``, ``kn_specific``, fact id ``key@s``: metric ``suppress@t`` and
  ``neurons`` (how many were set to 0);
* variant ``params``: ``seed``, ``keys``, ``min_languages``.

The cross-lingual edit is :mod:`.cross_lingual_edit`.

Example:
    >>> rows = language_study(lm, atlas.facts(), atlas.all_refined(), seed=0)
    >>> suppression_matrix(rows, "kn")[("en", "fr")]       # (mean Δp/p in French, keys)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kneuron.attribution.types import Neuron
from kneuron.errors import KneuronError
from kneuron.facts.fact import Fact
from kneuron.facts.languages import LANGUAGE_NAMES, fact_key, language_of, with_language
from kneuron.models.hooks import suppress_patches
from kneuron.models.language_model import LanguageModel
from kneuron.studies.metrics import NeuronKey, answer_probabilities, fact_rng, relative_change, row
from kneuron.studies.suppress_amplify import encode_facts, keys_of, random_control

STUDY = "languages"
SUPPRESS_VARIANTS = ("kn", "random", "kn_shared", "kn_specific")
CATEGORIES = ("shared_all", "shared", "specific")


# ------------------------------------------------------------------------------------------------ grouping

def language_order(codes: Iterable[str]) -> list[str]:
    """Language codes in a fixed order: the built-in set's (en, fr, de, es, zh) first, then the others sorted."""
    known = list(LANGUAGE_NAMES)
    return sorted(set(codes), key=lambda code: (known.index(code) if code in known else len(known), code))


def language_versions(facts: Iterable[Fact]) -> dict[str, dict[str, Fact]]:
    """``{key: {language: fact}}`` of the facts whose id has a language suffix (keys in first-seen order, languages
    in :func:`language_order`); facts without a language are left out."""
    found: dict[str, dict[str, Fact]] = {}
    for fact in facts:
        language = language_of(fact)
        if language is not None:
            found.setdefault(fact_key(fact), {})[language] = fact
    return {key: {code: versions[code] for code in language_order(versions)} for key, versions in found.items()}


def multilingual_keys(facts: Iterable[Fact], min_languages: int = 2) -> dict[str, dict[str, Fact]]:
    """:func:`language_versions` of the keys with at least ``min_languages`` languages."""
    return {key: versions for key, versions in language_versions(facts).items() if len(versions) >= min_languages}


def multilingual_refusal(facts: Sequence[Fact], min_languages: int = 2) -> str | None:
    """Why the study cannot run on these (done) facts, in one line, or None when it can."""
    versions = language_versions(facts)
    if not versions:
        return ("none of its done facts has a language: multilingual facts have ids like 'capital:France@fr' "
                "(make the atlas with `kneuron run --facts multilingual`)")
    if not multilingual_keys(facts, min_languages):
        return (f"none of its {len(versions)} multilingual fact(s) is done (known) in {min_languages} or more "
                "languages (each fact's versions share the id before '@'); run more languages or facts")
    return None


# ------------------------------------------------------------------------------------------------ overlap

@dataclass(frozen=True)
class Overlap:
    """One key's knowledge neurons per language and how they overlap."""

    key: str
    neurons: Mapping[str, frozenset[NeuronKey]]

    @property
    def languages(self) -> list[str]:
        return list(self.neurons)

    @property
    def counts(self) -> dict[NeuronKey, int]:
        """In how many of the key's languages each neuron of the union is a knowledge neuron."""
        counts: dict[NeuronKey, int] = defaultdict(int)
        for found in self.neurons.values():
            for key in found:
                counts[key] += 1
        return dict(counts)

    @property
    def union(self) -> frozenset[NeuronKey]:
        return frozenset(self.counts)

    @property
    def shared_all(self) -> frozenset[NeuronKey]:
        return frozenset(k for k, n in self.counts.items() if n == len(self.neurons))

    @property
    def shared(self) -> frozenset[NeuronKey]:
        return frozenset(k for k, n in self.counts.items() if n >= 2)

    @property
    def specific(self) -> frozenset[NeuronKey]:
        return frozenset(k for k, n in self.counts.items() if n == 1)

    def specific_to(self, language: str) -> frozenset[NeuronKey]:
        return self.neurons[language] & self.specific


def overlap_of(key: str, versions: Mapping[str, Fact],
               neurons_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]]) -> Overlap:
    """The :class:`Overlap` of a key's language versions (a fact missing from ``neurons_by_fact`` has none)."""
    return Overlap(key, {code: frozenset(keys_of(neurons_by_fact.get(fact.id, ()))) for code, fact in versions.items()})


def jaccard(a: Iterable[NeuronKey], b: Iterable[NeuronKey]) -> float:
    """|a ∩ b| / |a ∪ b|; NaN when both are empty."""
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else math.nan


def overlap_rows(overlap: Overlap, relation: str) -> list[dict]:
    """The overlap and Jaccard rows of one key (see the module docstring)."""
    union = len(overlap.union)
    sizes = {"shared_all": len(overlap.shared_all), "shared": len(overlap.shared), "specific": len(overlap.specific)}
    rows = [row(STUDY, "overlap", relation, overlap.key, "languages", len(overlap.neurons)),
            row(STUDY, "overlap", relation, overlap.key, "union", union)]
    for name, size in sizes.items():
        rows.append(row(STUDY, "overlap", relation, overlap.key, name, size))
        rows.append(row(STUDY, "overlap", relation, overlap.key, f"share_{name}", size / union if union else math.nan))
    for code in overlap.languages:
        rows.append(row(STUDY, "overlap", relation, overlap.key, f"specific@{code}", len(overlap.specific_to(code))))
    codes = overlap.languages
    for i, a in enumerate(codes):
        for b in codes[i + 1:]:
            rows.append(row(STUDY, "jaccard", relation, overlap.key, f"{a}|{b}",
                            jaccard(overlap.neurons[a], overlap.neurons[b])))
    return rows


def layer_rows(overlaps: Iterable[Overlap], n_layers: int) -> list[dict]:
    """Per layer, how many shared-by-all, shared and specific neurons the keys have (a neuron counts once per key)."""
    counts = {name: np.zeros(n_layers, dtype=np.int64) for name in CATEGORIES}
    for overlap in overlaps:
        for name, found in (("shared_all", overlap.shared_all), ("shared", overlap.shared),
                            ("specific", overlap.specific)):
            for layer, _ in found:
                counts[name][layer] += 1
    return [row(STUDY, name, "", "", f"layer:{layer}", int(counts[name][layer]))
            for name in CATEGORIES for layer in range(n_layers)]


# ------------------------------------------------------------------------------------------------ the study

def language_study(
    lm: LanguageModel,
    facts: Sequence[Fact],
    neurons_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]],
    *,
    min_languages: int = 2,
    seed: int = 0,
    batch_size: int = 32,
    on_key: Callable[[str], None] | None = None,
) -> list[dict]:
    """Overlap, layers and cross-lingual suppression of the keys of ``facts`` (the done ones) in at least
    ``min_languages`` languages; see the module docstring for the rows.

    Raises:
        KneuronError: no fact has a language, or no key has ``min_languages`` languages.
    """
    why = multilingual_refusal(facts, min_languages)
    if why:
        raise KneuronError(f"No cross-lingual study: {why}.")
    keys = multilingual_keys(facts, min_languages)
    rows: list[dict] = []
    overlaps = []
    for key, versions in keys.items():
        relation = next(iter(versions.values())).relation
        overlap = overlap_of(key, versions, neurons_by_fact)
        overlaps.append(overlap)
        rows += overlap_rows(overlap, relation)
        rows += suppression_rows(lm, overlap, versions, seed=seed, batch_size=batch_size)
        if on_key:
            on_key(key)
    rows += layer_rows(overlaps, lm.n_layers)
    rows += [row(STUDY, "params", "", "", "seed", seed), row(STUDY, "params", "", "", "keys", len(keys)),
             row(STUDY, "params", "", "", "min_languages", min_languages)]
    return rows


def suppression_sets(overlap: Overlap, source: str, n_neurons: int, seed: int) -> dict[str, list[NeuronKey]]:
    """The neurons each suppression variant sets to 0 for source language ``source`` (in a fixed order)."""
    own = sorted(overlap.neurons[source])
    rng = fact_rng(seed, with_language(overlap.key, source))
    shared = overlap.shared
    return {"kn": own,
            "random": random_control(own, n_neurons, rng, exclude=overlap.union),
            "kn_shared": [k for k in own if k in shared],
            "kn_specific": [k for k in own if k not in shared]}


def suppression_rows(lm: LanguageModel, overlap: Overlap, versions: Mapping[str, Fact], *, seed: int = 0,
                     batch_size: int = 32) -> list[dict]:
    """One key's clean probabilities and its s × t suppression rows (see the module docstring)."""
    queries = encode_facts(lm, list(versions.values()))
    codes = list(versions)
    flat = [q for code in codes for q in queries[versions[code].id]]
    spans, start = {}, 0
    for code in codes:
        spans[code] = slice(start, start + len(queries[versions[code].id]))
        start = spans[code].stop
    before = answer_probabilities(lm, flat, batch_size=batch_size)
    rows = [row(STUDY, "kn", versions[code].relation, versions[code].id, "neurons", len(overlap.neurons[code]))
            for code in codes]
    rows += [row(STUDY, "kn", versions[code].relation, versions[code].id, "p_before", before[spans[code]].mean())
             for code in codes if spans[code].stop > spans[code].start]
    measured: dict[tuple[NeuronKey, ...], np.ndarray] = {}
    for source in codes:
        fact = versions[source]
        for variant, keys in suppression_sets(overlap, source, lm.n_neurons, seed).items():
            if variant != "kn" and not keys:
                continue
            if variant != "kn":  # the kn row of each fact is written above
                rows.append(row(STUDY, variant, fact.relation, fact.id, "neurons", len(keys)))
            if not keys:
                continue
            if tuple(keys) not in measured:
                measured[tuple(keys)] = answer_probabilities(lm, flat, suppress_patches(keys), batch_size=batch_size)
            after = measured[tuple(keys)]
            for target in codes:
                span = spans[target]
                if span.stop > span.start:
                    rows.append(row(STUDY, variant, fact.relation, fact.id, f"suppress@{target}",
                                    relative_change(before[span], after[span]).mean()))
    return rows


# ------------------------------------------------------------------------------------------------ summaries

def _finite_mean(values: Sequence[float]) -> tuple[float, int]:
    kept = [v for v in values if math.isfinite(v)]
    return (float(np.mean(kept)), len(kept)) if kept else (math.nan, 0)


def study_languages(rows: Iterable[dict]) -> list[str]:
    """The languages the rows are about, in :func:`language_order`."""
    return language_order(code for r in rows if r["variant"] == "kn" and r["metric"] == "neurons"
                          and (code := language_of(r["fact_id"])))


def neurons_per_language(rows: Iterable[dict]) -> dict[str, tuple[float, int]]:
    """``{language: (mean knowledge neurons per fact, facts)}`` over the studied keys."""
    found: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["variant"] == "kn" and r["metric"] == "neurons" and (code := language_of(r["fact_id"])):
            found[code].append(r["value"])
    return {code: _finite_mean(found[code]) for code in language_order(found)}


def overlap_summary(rows: Iterable[dict]) -> dict[str, tuple[float, int]]:
    """``{metric: (mean over keys, keys)}`` of the ``overlap`` rows (counts, shares, ``specific@l``)."""
    found: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["variant"] == "overlap" and r["fact_id"]:
            found[r["metric"]].append(r["value"])
    return {metric: _finite_mean(values) for metric, values in found.items()}


def jaccard_summary(rows: Iterable[dict]) -> dict[tuple[str, str], tuple[float, int]]:
    """``{(a, b): (mean Jaccard over keys, keys)}`` per language pair (NaN pairs left out of the mean and n)."""
    found: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["variant"] == "jaccard" and r["fact_id"]:
            a, b = r["metric"].split("|", 1)
            found[a, b].append(r["value"])
    return {pair: _finite_mean(values) for pair, values in found.items()}


def layer_summary(rows: Iterable[dict]) -> dict[str, dict[int, int]]:
    """``{category: {layer: neurons}}`` for shared_all, shared and specific."""
    found: dict[str, dict[int, int]] = {name: {} for name in CATEGORIES}
    for r in rows:
        if r["variant"] in found and not r["fact_id"] and r["metric"].startswith("layer:"):
            found[r["variant"]][int(r["metric"].split(":", 1)[1])] = int(r["value"])
    return {name: dict(sorted(counts.items())) for name, counts in found.items()}


def suppression_matrix(rows: Iterable[dict], variant: str = "kn") -> dict[tuple[str, str], tuple[float, int]]:
    """``{(source, target): (mean relative change over keys, keys)}`` of one suppression variant."""
    found: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["variant"] == variant and r["metric"].startswith("suppress@") and (source := language_of(r["fact_id"])):
            found[source, r["metric"].split("@", 1)[1]].append(r["value"])
    return {pair: _finite_mean(values) for pair, values in found.items()}


def own_and_cross(matrix: Mapping[tuple[str, str], tuple[float, int]]) -> tuple[tuple[float, int], tuple[float, int]]:
    """(mean of the own-language cells s = t, mean of the cross-language cells s ≠ t), each weighted by its keys, with
    the number of (key, s, t) measurements behind it."""
    parts: dict[bool, list[tuple[float, int]]] = {True: [], False: []}
    for (source, target), (mean, n) in matrix.items():
        if n:
            parts[source == target].append((mean, n))
    out = []
    for own in (True, False):
        total = sum(n for _, n in parts[own])
        out.append((sum(m * n for m, n in parts[own]) / total if total else math.nan, total))
    return out[0], out[1]
