"""Neuron interactions (issue #14; the paper names "neuron interactions not studied" among its limits): do a fact's
knowledge neurons act alone, together (synergy) or as back-ups of each other (redundancy), and how many of them does
it take to switch the fact off?

A fact's knowledge neurons are ranked by their score (highest first, ties by ``(layer, index)``); rank 1 is the
best-scored neuron. Every measurement is the one of the suppress / amplify study (:mod:`.suppress_amplify`): the
neurons are set to 0 at each prompt's answer position and Δ is the mean over the fact's prompts of the relative
change of the answer's (joint) probability, (p_after − p_before) / p_before, so Δ(all) here is that study's
``kn`` / ``suppress`` value of the fact. For each fact:

* **singles and pairs**: Δ of each of its top ``cap`` neurons alone, and of every pair of them (cap 8: 28 pairs);
  the pair's **interaction** is Δ(a, b) − Δ(a) − Δ(b). A pair is *synergistic* when it suppresses more than the
  sum of its neurons (interaction < −``tolerance``), *redundant* when less (interaction > ``tolerance``), and
  *additive* otherwise. Δ is bounded below by −1, so two neurons that each remove 60% cannot add up to −120%:
  strong singles push pairs towards "redundant" under this additive null. The multiplicative null (independent
  factors on the probability: per prompt the pair's expected ratio is the product of the singles' ratios) is stored
  beside it as ``interaction_mult`` (variant ``pairs_mult`` for its shares), and classified with the same
  tolerance;
* **all**: Δ of all of its neurons together;
* **cumulative curve**: Δ of its top-k neurons for k = 1..K (K = all its neurons, or ``max_k``), and of the first k
  of as many random neurons (the random control of :mod:`.suppress_amplify`: one per ranked neuron, from its layer,
  none a knowledge neuron of the fact, seeded by ``seed`` and the fact id); **neurons needed** for −50% and −90%:
  the smallest k whose Δ is at or below −0.5 (−0.9), NaN when the curve never gets there.

Rows (the atlas's long format, ``study="interactions"``, one fact per fact id):

* variant ``kn``: ``neurons`` (all its neurons), ``capped`` (those in the pair analysis), ``p_before`` (mean clean
  probability), ``suppress_all``, ``curve:k``, ``needed_50``, ``needed_90`` (NaN = not reached), ``reached_50``,
  ``reached_90`` (1 or 0);
* variant ``random``: ``curve:k``, ``needed_50``, ``needed_90``, ``reached_50``, ``reached_90``;
* variant ``single``: ``delta:r`` (rank r); variant ``pair``: ``delta:r|s``, ``interaction:r|s``,
  ``interaction_mult:r|s``;
* variant ``pairs`` (additive null) and ``pairs_mult`` (multiplicative null): ``count``, ``synergistic``,
  ``redundant``, ``additive`` (shares of the fact's pairs), ``mean_interaction``; only ``count`` (0) when the fact
  has fewer than two neurons;
* variant ``params`` (no fact): ``cap``, ``max_k`` (0 = all), ``tolerance``, ``seed``, ``facts``.

**Cost.** All the variants of one prompt share forward passes: for a causal model the prompt's tokens before the
answer position are run once (nothing is patched there, and a causal model's earlier positions never see later
ones), and every variant then runs only the answer position onwards, from that cached prefix, one variant per row
(:func:`kneuron.studies.metrics.patched_probabilities`). A masked model sees both sides of its [MASK], so it runs
the whole prompt per variant, still many variants per batch.

Example:
    >>> rows = interactions_study(lm, atlas.facts(), atlas.all_refined(), cap=8)
    >>> summarize(rows, "pairs", "synergistic").mean      # share of synergistic pairs, mean over facts
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kneuron.attribution.types import Neuron
from kneuron.facts.encoding import EncodedQuery
from kneuron.facts.fact import Fact
from kneuron.models.hooks import suppress_patches
from kneuron.models.language_model import LanguageModel
from kneuron.studies.metrics import (
    NeuronKey,
    fact_rng,
    patched_probabilities,
    row,
    summarize,
)
from kneuron.studies.suppress_amplify import encode_facts, random_control

STUDY = "interactions"
#: neurons (best scored first) of a fact whose singles and pairs are measured: 8 neurons, 28 pairs
CAP = 8
#: |interaction| at or below this (in units of the relative change, 0.02 = 2 points) is additive
TOLERANCE = 0.02
#: the suppression levels whose neuron counts are reported (−50%, −90%)
LEVELS = (0.5, 0.9)
KINDS = ("synergistic", "redundant", "additive")

NeuronSet = tuple[NeuronKey, ...]


def ranked(neurons: Iterable[Neuron | NeuronKey]) -> list[NeuronKey]:
    """The neurons' keys by score, highest first (ties, and plain keys, by ``(layer, index)``), duplicates removed."""
    best: dict[NeuronKey, float] = {}
    for n in neurons:
        key = n.key if hasattr(n, "key") else (int(n[0]), int(n[1]))
        score = float(getattr(n, "score", 0.0))
        best[key] = max(score, best.get(key, -math.inf))
    return sorted(best, key=lambda key: (-best[key], key))


@dataclass(frozen=True)
class FactPlan:
    """What is suppressed for one fact: its ranked neurons, those in the pair analysis, those of the cumulative
    curve, and the random control of the curve (same layers, in the same order)."""

    kn: tuple[NeuronKey, ...]
    capped: tuple[NeuronKey, ...]
    curve: tuple[NeuronKey, ...]
    random: tuple[NeuronKey, ...]

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Index pairs (i < j) into :attr:`capped`."""
        return list(itertools.combinations(range(len(self.capped)), 2))

    def sets(self) -> list[NeuronSet]:
        """Every neuron set to measure, once each (the empty set: the clean probabilities), in a fixed order."""
        wanted: list[NeuronSet] = [(), self.kn]
        wanted += [(key,) for key in self.capped]
        wanted += [(self.capped[i], self.capped[j]) for i, j in self.pairs]
        wanted += [self.curve[:k] for k in range(1, len(self.curve) + 1)]
        wanted += [self.random[:k] for k in range(1, len(self.random) + 1)]
        return list(dict.fromkeys(canonical(s) for s in wanted))


def canonical(neurons: Iterable[NeuronKey]) -> NeuronSet:
    """A set of neurons as one sorted tuple (the order of suppressed neurons does not matter)."""
    return tuple(sorted(set(neurons)))


def plan_fact(neurons: Iterable[Neuron | NeuronKey], n_neurons: int, rng: np.random.Generator, *, cap: int = CAP,
              max_k: int | None = None) -> FactPlan:
    """The :class:`FactPlan` of a fact with these knowledge neurons (``max_k`` None: the curve has all of them)."""
    kn = ranked(neurons)
    curve = kn if max_k is None else kn[:max_k]
    return FactPlan(tuple(kn), tuple(kn[:cap]), tuple(curve), tuple(random_control(curve, n_neurons, rng)))


# ------------------------------------------------------------------------------------------------ measuring

def suppressed_probabilities(lm: LanguageModel, queries: Sequence[EncodedQuery], sets: Sequence[NeuronSet], *,
                             batch_size: int = 64) -> np.ndarray:
    """(len(sets), len(queries)) joint answer probability of each query with each set of neurons set to 0 at its
    answer position (the empty set: the clean probability); what :func:`~.metrics.answer_probabilities` gives
    under ``suppress_patches(set)``, with all the variants batched together
    (:func:`~.metrics.patched_probabilities`)."""
    return patched_probabilities(lm, queries, [suppress_patches(s) for s in sets], batch_size=batch_size)


# ------------------------------------------------------------------------------------------------ per fact

def neurons_needed(curve: Sequence[float], level: float) -> float:
    """The smallest k (1-based) with ``curve[k - 1] <= -level``: how many neurons it takes to remove ``level`` of
    the answer's probability; NaN when no point of the curve gets there."""
    for k, delta in enumerate(curve, start=1):
        if delta <= -level:
            return float(k)
    return math.nan


def classify(interaction: float, tolerance: float = TOLERANCE) -> str:
    """``synergistic`` (the pair suppresses more than its parts: interaction < −tolerance), ``redundant`` (less:
    interaction > tolerance) or ``additive`` (the callers leave NaN interactions out before classifying)."""
    if interaction < -tolerance:
        return "synergistic"
    if interaction > tolerance:
        return "redundant"
    return "additive"


def _pair_share_rows(variant: str, fact: Fact, interactions: Sequence[float], tolerance: float) -> list[dict]:
    kept = [v for v in interactions if math.isfinite(v)]
    rows = [row(STUDY, variant, fact.relation, fact.id, "count", len(kept))]
    if kept:
        kinds = [classify(v, tolerance) for v in kept]
        rows += [row(STUDY, variant, fact.relation, fact.id, kind, kinds.count(kind) / len(kept)) for kind in KINDS]
        rows.append(row(STUDY, variant, fact.relation, fact.id, "mean_interaction", float(np.mean(kept))))
    return rows


def fact_rows(fact: Fact, plan: FactPlan, probabilities: Mapping[NeuronSet, np.ndarray], *,
              tolerance: float = TOLERANCE) -> list[dict]:
    """The rows of one fact (see the module docstring) from the probabilities of each set of :meth:`FactPlan.sets`
    ((prompts,) arrays, the empty set's being the clean ones)."""
    before = probabilities[()]

    def ratio(neurons: Iterable[NeuronKey]) -> np.ndarray:
        return probabilities[canonical(neurons)] / before

    def delta(neurons: Iterable[NeuronKey]) -> float:
        return float((ratio(neurons) - 1.0).mean())

    rel, fid = fact.relation, fact.id
    rows = [row(STUDY, "kn", rel, fid, "neurons", len(plan.kn)), row(STUDY, "kn", rel, fid, "capped", len(plan.capped)),
            row(STUDY, "kn", rel, fid, "p_before", before.mean()),
            row(STUDY, "kn", rel, fid, "suppress_all", delta(plan.kn))]
    singles = [delta([key]) for key in plan.capped]
    rows += [row(STUDY, "single", rel, fid, f"delta:{r}", value) for r, value in enumerate(singles, start=1)]
    additive, multiplicative = [], []
    for i, j in plan.pairs:
        a, b = plan.capped[i], plan.capped[j]
        pair = delta([a, b])
        expected_mult = float((ratio([a]) * ratio([b]) - 1.0).mean())
        additive.append(pair - singles[i] - singles[j])
        multiplicative.append(pair - expected_mult)
        name = f"{i + 1}|{j + 1}"
        rows += [row(STUDY, "pair", rel, fid, f"delta:{name}", pair),
                 row(STUDY, "pair", rel, fid, f"interaction:{name}", additive[-1]),
                 row(STUDY, "pair", rel, fid, f"interaction_mult:{name}", multiplicative[-1])]
    rows += _pair_share_rows("pairs", fact, additive, tolerance)
    rows += _pair_share_rows("pairs_mult", fact, multiplicative, tolerance)
    for variant, neurons in (("kn", plan.curve), ("random", plan.random)):
        curve = [delta(neurons[:k]) for k in range(1, len(neurons) + 1)]
        rows += [row(STUDY, variant, rel, fid, f"curve:{k}", value) for k, value in enumerate(curve, start=1)]
        for level in LEVELS:
            needed = neurons_needed(curve, level)
            rows += [row(STUDY, variant, rel, fid, f"needed_{round(level * 100)}", needed),
                     row(STUDY, variant, rel, fid, f"reached_{round(level * 100)}", float(math.isfinite(needed)))]
    return rows


# ------------------------------------------------------------------------------------------------ the study

def interactions_study(
    lm: LanguageModel,
    facts: Sequence[Fact],
    neurons_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]],
    *,
    cap: int = CAP,
    max_k: int | None = None,
    tolerance: float = TOLERANCE,
    seed: int = 0,
    batch_size: int = 64,
    queries: Mapping[str, list[EncodedQuery]] | None = None,
    on_fact: Callable[[Fact], None] | None = None,
) -> list[dict]:
    """Singles, pairs, all and the cumulative curves of every fact of ``facts`` with knowledge neurons (the others
    are skipped); see the module docstring for the rows.

    Args:
        neurons_by_fact: each fact's knowledge neurons by fact id (``Neuron`` objects are ranked by score).
        cap: how many of a fact's best-scored neurons enter the singles and pairs (``cap * (cap - 1) / 2`` pairs).
        max_k: the longest cumulative curve (None: all of the fact's neurons).
        tolerance: |interaction| up to this is additive.
        seed: seeds the random control (with the fact id, so results do not depend on fact order).
        batch_size: variants (rows) per forward pass.
        queries: pre-encoded prompts by fact id (computed when missing).
        on_fact: called after each fact (progress).
    """
    if cap < 1 or (max_k is not None and max_k < 1) or tolerance < 0 or batch_size < 1:
        raise ValueError("cap, max_k and batch_size must be at least 1 and tolerance not negative")
    queries = encode_facts(lm, facts, queries)
    rows: list[dict] = []
    studied = 0
    for fact in facts:
        neurons = neurons_by_fact.get(fact.id, ())
        if neurons and queries[fact.id]:
            plan = plan_fact(neurons, lm.n_neurons, fact_rng(seed, fact.id), cap=cap, max_k=max_k)
            sets = plan.sets()
            measured = suppressed_probabilities(lm, queries[fact.id], sets, batch_size=batch_size)
            rows += fact_rows(fact, plan, dict(zip(sets, measured, strict=True)), tolerance=tolerance)
            studied += 1
        if on_fact:
            on_fact(fact)
    rows += [row(STUDY, "params", "", "", "cap", cap), row(STUDY, "params", "", "", "max_k", max_k or 0),
             row(STUDY, "params", "", "", "tolerance", tolerance), row(STUDY, "params", "", "", "seed", seed),
             row(STUDY, "params", "", "", "facts", studied)]
    return rows


# ------------------------------------------------------------------------------------------------ summaries

def fact_curves(rows: Iterable[dict], variant: str = "kn") -> dict[str, list[float]]:
    """``{fact id: [Δ of the top-1, top-2, ...]}`` of one variant's cumulative curves (``kn`` or ``random``)."""
    points: dict[str, dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r["variant"] == variant and r["fact_id"] and r["metric"].startswith("curve:"):
            points[r["fact_id"]][int(r["metric"].split(":", 1)[1])] = r["value"]
    return {fact_id: [by_k[k] for k in sorted(by_k)] for fact_id, by_k in points.items()}


def curve_summary(rows: Iterable[dict], variant: str = "kn") -> dict[int, tuple[float, int]]:
    """``{k: (mean Δ of the top-k over the facts whose curve reaches k, facts)}``."""
    found: dict[int, list[float]] = defaultdict(list)
    for curve in fact_curves(rows, variant).values():
        for k, value in enumerate(curve, start=1):
            if math.isfinite(value):
                found[k].append(value)
    return {k: (float(np.mean(v)), len(v)) for k, v in sorted(found.items())}


def study_params(rows: Iterable[dict]) -> dict[str, float]:
    """The ``params`` rows as ``{name: value}``."""
    return {r["metric"]: r["value"] for r in rows if r["variant"] == "params"}


#: the per-fact figures :func:`interaction_summary` averages: (label, variant, metric)
SUMMARY_METRICS = (
    ("neurons", "kn", "neurons"), ("best single", "single", "delta:1"), ("all", "kn", "suppress_all"),
    ("synergistic", "pairs", "synergistic"), ("redundant", "pairs", "redundant"), ("additive", "pairs", "additive"),
    ("mean interaction", "pairs", "mean_interaction"),
    ("synergistic (mult.)", "pairs_mult", "synergistic"), ("redundant (mult.)", "pairs_mult", "redundant"),
    ("needed 50 kn", "kn", "needed_50"), ("needed 90 kn", "kn", "needed_90"),
    ("needed 50 random", "random", "needed_50"), ("needed 90 random", "random", "needed_90"),
    ("reached 50 kn", "kn", "reached_50"), ("reached 90 kn", "kn", "reached_90"),
    ("reached 50 random", "random", "reached_50"), ("reached 90 random", "random", "reached_90"),
)


#: how the summaries label each of :data:`SUMMARY_METRICS` (and whether it is a percentage, signed)
FIGURE_LABELS = {
    "neurons": ("knowledge neurons per fact", False, False),
    "best single": ("Δ, best-scored neuron alone", True, True),
    "all": ("Δ, all knowledge neurons", True, True),
    "synergistic": ("pairs synergistic", True, False), "redundant": ("pairs redundant", True, False),
    "additive": ("pairs additive", True, False), "mean interaction": ("mean pair interaction", False, True),
    "synergistic (mult.)": ("pairs synergistic, mult. null", True, False),
    "redundant (mult.)": ("pairs redundant, mult. null", True, False),
    "needed 50 kn": ("top-k for −50%: KN", False, False), "needed 50 random": ("top-k for −50%: random", False, False),
    "needed 90 kn": ("top-k for −90%: KN", False, False), "needed 90 random": ("top-k for −90%: random", False, False),
    "reached 50 kn": ("facts reaching −50%: KN", True, False),
    "reached 50 random": ("facts reaching −50%: random", True, False),
    "reached 90 kn": ("facts reaching −90%: KN", True, False),
    "reached 90 random": ("facts reaching −90%: random", True, False),
}


def interaction_figures(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> tuple[list[str], list[list[str]]]:
    """The summary as a table of text: the groups (``all facts`` and each relation) and one line per figure of
    :data:`SUMMARY_METRICS`, ``[label, cell per group]``, each cell the stored mean over the group's facts with its
    95% interval, n and (the cumulative curves) the paired p against random neurons
    (:func:`~kneuron.studies.display.stored_figure`)."""
    from kneuron.studies.display import stored_figure

    relations = sorted({r["relation"] for r in rows if r["fact_id"] and r["variant"] != "params"})
    lines = []
    for label, variant, metric in SUMMARY_METRICS:
        text, percent, signed = FIGURE_LABELS[label]
        lines.append([text, *(stored_figure(aggregates, rows, STUDY, variant, metric, relation, percent=percent,
                                            signed=signed) for relation in ("", *relations))])
    return ["all facts", *relations], lines


def interaction_summary(rows: Sequence[dict]) -> dict[str, dict[str, tuple[float, int]]]:
    """``{group: {label: (mean over facts, facts)}}`` of :data:`SUMMARY_METRICS`, for ``"all"`` and each relation.

    NaN values are left out: ``needed …`` is the mean over the facts that reach the level (their number is the
    ``n``), ``reached …`` the share of facts that do."""
    rows = list(rows)
    relations = sorted({r["relation"] for r in rows if r["fact_id"]})
    out = {group: {label: (math.nan, 0) for label, _, _ in SUMMARY_METRICS} for group in ("all", *relations)}
    for label, variant, metric in SUMMARY_METRICS:
        summary = summarize(rows, variant, metric)
        out["all"][label] = (summary.mean, summary.n)
        for relation, entry in summary.per_relation.items():
            out[relation][label] = entry
    return out
