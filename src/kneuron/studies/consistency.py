"""Consistency of a fact's attributions across its paraphrases, and the consistent / inconsistent split of Chen et
al. (ICLR 2025): "many facts' neurons are not consistent across paraphrases; they split facts into consistent and
inconsistent with an Otsu threshold on a consistency score" (../shared/PAPER.md, all this module relies on).

Per done fact of an atlas, from what the run stored (no model is needed):

* ``jaccard``: the mean over the fact's prompt pairs of |C(i) ∩ C(j)| / |C(i) ∪ C(j)|, C(i) the coarse set of
  prompt i (its neurons above the atlas's threshold, 0.2 x the prompt's maximum score, from the ``neurons``
  table). A pair whose two coarse sets are both empty (no positive score in either prompt) says nothing about
  agreement and is left out; a fact with no pair left (one prompt) has NaN.
* ``rank_correlation``: the mean over prompt pairs of Spearman's rank correlation (average ranks for ties) of the
  two prompts' score vectors, taken over the fact's **kept union**: the neurons where some prompt of the fact
  scores ``|score| >= 0.05 x`` its own maximum (the entries a ``sparse`` atlas keeps, :mod:`kneuron.store.scores`;
  the share is the atlas's ``sparse_threshold``). That is exactly where some prompt scores anything notable, and
  inside it a sparse atlas holds every prompt's true score, so the figure is the same from a ``full`` and a
  ``sparse`` atlas (a full atlas's union is recomputed by the same rule). Over all neurons instead, the tens of
  thousands of near-zero scores of a layer would dominate the ranks. A full atlas also gets
  ``rank_correlation_all``, over every neuron, for comparison. A pair where either prompt is constant there is
  left out. A ``none`` atlas keeps no score matrices: its rank correlations are NaN (and the CLI says so in one
  line), its Jaccard is computed all the same.

**The consistency score is the Jaccard.** The knowledge-neuron method localises a fact through its coarse sets
(refinement keeps the neurons coarse in enough of the prompts), so whether those sets agree across paraphrases is
the question the localisation claim rests on, and the one Chen et al. raise; the rank correlation measures the
agreement of the whole attribution, mostly of neurons no prompt selects. The Jaccard is also defined for every
atlas, ``none`` included, so the split does not depend on how much of the scores a run kept. Both are stored.

**Otsu split** (:func:`otsu_split`): over the facts' finite Jaccards, the threshold that maximises the
between-class variance w0 w1 (m0 - m1)^2 of the two classes it makes (computed exactly over the sorted values,
not over a histogram). It is the midpoint between the two neighbouring values it separates; a fact is
``consistent`` (1) when its score is above it, inconsistent (0) otherwise. With fewer than two finite scores, or
all of them equal, there is nothing to split: the threshold is NaN and every ``consistent`` is NaN. Otsu always
splits two or more distinct values, also a unimodal spread: the share of inconsistent facts is where the split
falls, not a test that two groups exist.

Rows (study ``consistency``): variant ``fact`` per fact (relation, id): ``jaccard``, ``rank_correlation``
(+ ``rank_correlation_all`` in a full atlas), ``consistent`` (1/0, NaN without a split), ``prompts``; variant
``relation`` per relation (no fact id) and ``all`` (no relation): ``facts``, ``jaccard`` and ``rank_correlation``
(means over the facts where finite), ``consistent`` and ``inconsistent`` (counts) and ``inconsistent_share`` (of
the facts the split classed); ``all`` also has ``score_agreement``, Spearman's rank correlation across the facts of
their Jaccard and their rank correlation (NaN below two facts with both); variant ``otsu``: ``threshold``,
``facts`` (how many scores it split), ``between_variance``; variant ``params``: ``union_share`` (the 0.05 of the
kept union).

:func:`split_comparison` compares another study's per-fact metric (suppress / amplify, editing) between the two
classes, from the rows alone.

Example:
    >>> rows = consistency_study(atlas)             # computes and stores the rows
    >>> split_comparison(rows, atlas.results("suppress_amplify"), "kn", "suppress")
    {'consistent': (-0.31, 11), 'inconsistent': (-0.12, 5)}
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from kneuron.attribution.types import Neuron
from kneuron.studies.estimator_agreement import average_ranks, spearman
from kneuron.studies.metrics import NeuronKey, row

STUDY = "consistency"
#: the share of a prompt's maximum score above which a neuron joins the fact's kept union (the sparse atlas's)
UNION_SHARE = 0.05


# ------------------------------------------------------------------------------------------- the two scores


def _keys(neurons: Iterable[Neuron | NeuronKey]) -> frozenset[NeuronKey]:
    return frozenset(n.key if hasattr(n, "key") else (int(n[0]), int(n[1])) for n in neurons)


def mean_pairwise_jaccard(coarse: Sequence[Iterable[Neuron | NeuronKey]]) -> float:
    """The mean over prompt pairs of the Jaccard of their coarse sets; pairs of two empty sets are left out, NaN
    when no pair is left."""
    sets = [_keys(c) for c in coarse]
    values = [len(a & b) / len(a | b) for a, b in combinations(sets, 2) if a or b]
    return float(np.mean(values)) if values else math.nan


def score_union(matrices: Sequence[np.ndarray], share: float = UNION_SHARE) -> np.ndarray:
    """Flat indices where some prompt's ``|score| >= share x`` its maximum (every index for a prompt whose maximum
    is not positive): the entries a sparse atlas keeps (:func:`kneuron.store.scores.sparse_index`'s rule)."""
    keep = None
    for matrix in matrices:
        flat = np.asarray(matrix, dtype=np.float64).reshape(-1)
        top = float(flat.max()) if flat.size else 0.0
        mine = np.abs(flat) >= share * top if top > 0 else np.ones(flat.size, dtype=bool)
        keep = mine if keep is None else keep | mine
    return np.flatnonzero(keep) if keep is not None else np.zeros(0, dtype=np.int64)


def mean_pairwise_spearman(vectors: Sequence[np.ndarray]) -> float:
    """The mean over pairs of ``vectors`` (equally long) of Spearman's rank correlation (average ranks for ties);
    pairs with a constant side are left out, NaN when no pair is left."""
    if len(vectors) < 2:
        return math.nan
    ranks = np.stack([average_ranks(v) for v in vectors])
    ranks -= ranks.mean(axis=1, keepdims=True)
    norms = np.sqrt((ranks * ranks).sum(axis=1))
    values = [float(ranks[i] @ ranks[j]) / (norms[i] * norms[j])
              for i, j in combinations(range(len(vectors)), 2) if norms[i] > 0 and norms[j] > 0]
    return float(np.mean(values)) if values else math.nan


def rank_consistency(matrices: Sequence[np.ndarray], share: float = UNION_SHARE) -> float:
    """The mean pairwise Spearman of a fact's prompts' score matrices over their kept union (see the module)."""
    flat = [np.asarray(m, dtype=np.float64).reshape(-1) for m in matrices]
    index = score_union(flat, share)
    return mean_pairwise_spearman([f[index] for f in flat])


# ------------------------------------------------------------------------------------------- the Otsu split


@dataclass(frozen=True)
class OtsuSplit:
    """An Otsu threshold over ``n`` finite scores (NaN, with ``reason``, when they cannot be split)."""

    threshold: float
    between_variance: float
    n: int
    reason: str = ""

    def consistent(self, score: float) -> float:
        """1.0 above the threshold, 0.0 at or below it, NaN for a NaN score or without a split."""
        if not math.isfinite(self.threshold) or not math.isfinite(score):
            return math.nan
        return 1.0 if score > self.threshold else 0.0


def between_class_variance(low: Sequence[float], high: Sequence[float]) -> float:
    """w0 w1 (m0 - m1)^2 of two non-empty classes, the weights their shares of all values."""
    n = len(low) + len(high)
    w0, w1 = len(low) / n, len(high) / n
    return w0 * w1 * (float(np.mean(low)) - float(np.mean(high))) ** 2


def otsu_split(scores: Iterable[float]) -> OtsuSplit:
    """The threshold maximising the between-class variance of the finite ``scores`` (exact, over the sorted
    values; ties of the variance go to the lowest threshold): the midpoint of the two values it separates."""
    values = np.sort(np.array([s for s in scores if math.isfinite(s)], dtype=np.float64))
    n = values.size
    if n < 2:
        return OtsuSplit(math.nan, math.nan, n, f"{n} fact(s) with a score: nothing to split")
    if values[0] == values[-1]:
        return OtsuSplit(math.nan, 0.0, n, f"all {n} scores are equal: nothing to split")
    sums = np.cumsum(values)
    best, best_k = -1.0, 0
    for k in range(1, n):
        if values[k - 1] == values[k]:  # a threshold cannot fall between equal values
            continue
        w0, w1 = k / n, (n - k) / n
        m0, m1 = sums[k - 1] / k, (sums[-1] - sums[k - 1]) / (n - k)
        variance = w0 * w1 * (m0 - m1) ** 2
        if variance > best:
            best, best_k = variance, k
    return OtsuSplit(float((values[best_k - 1] + values[best_k]) / 2), float(best), n)


# ------------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class FactConsistency:
    """One fact's two scores and its number of prompts."""

    fact_id: str
    relation: str
    jaccard: float
    rank_correlation: float
    prompts: int
    rank_correlation_all: float | None = None


def consistency_rows(entries: Sequence[FactConsistency], union_share: float = UNION_SHARE) -> list[dict]:
    """The study's rows (see the module) from each fact's scores: the Otsu split over their Jaccards, per-fact
    rows, per-relation and overall summaries."""
    split = otsu_split(e.jaccard for e in entries)
    rows: list[dict] = []
    classed: list[tuple[FactConsistency, float]] = []
    for entry in entries:
        flag = split.consistent(entry.jaccard)
        classed.append((entry, flag))
        rows += [row(STUDY, "fact", entry.relation, entry.fact_id, "jaccard", entry.jaccard),
                 row(STUDY, "fact", entry.relation, entry.fact_id, "rank_correlation", entry.rank_correlation)]
        if entry.rank_correlation_all is not None:
            rows.append(row(STUDY, "fact", entry.relation, entry.fact_id, "rank_correlation_all",
                            entry.rank_correlation_all))
        rows += [row(STUDY, "fact", entry.relation, entry.fact_id, "consistent", flag),
                 row(STUDY, "fact", entry.relation, entry.fact_id, "prompts", entry.prompts)]
    groups: dict[str, list[tuple[FactConsistency, float]]] = defaultdict(list)
    for entry, flag in classed:
        groups[entry.relation].append((entry, flag))
    for variant, relation, members in ([("relation", name, groups[name]) for name in sorted(groups)]
                                       + [("all", "", classed)]):
        rows += [row(STUDY, variant, relation, "", metric, value)
                 for metric, value in _summary(members).items()]
    pairs = [(e.jaccard, e.rank_correlation) for e in entries
             if math.isfinite(e.jaccard) and math.isfinite(e.rank_correlation)]
    agreement = spearman([a for a, _ in pairs], [b for _, b in pairs]) if pairs else math.nan
    rows.append(row(STUDY, "all", "", "", "score_agreement", agreement))
    rows += [row(STUDY, "otsu", "", "", "threshold", split.threshold),
             row(STUDY, "otsu", "", "", "facts", split.n),
             row(STUDY, "otsu", "", "", "between_variance", split.between_variance),
             row(STUDY, "params", "", "", "union_share", union_share)]
    return rows


def _finite_mean(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _summary(members: Sequence[tuple[FactConsistency, float]]) -> dict[str, float]:
    consistent = sum(1 for _, flag in members if flag == 1.0)
    inconsistent = sum(1 for _, flag in members if flag == 0.0)
    classed = consistent + inconsistent
    return {"facts": len(members), "jaccard": _finite_mean(e.jaccard for e, _ in members),
            "rank_correlation": _finite_mean(e.rank_correlation for e, _ in members),
            "consistent": consistent, "inconsistent": inconsistent,
            "inconsistent_share": inconsistent / classed if classed else math.nan}


def fact_consistency(fact_id: str, relation: str, coarse: Sequence[Sequence[Neuron]],
                     matrices: Sequence[np.ndarray] | None, share: float = UNION_SHARE,
                     full: bool = False) -> FactConsistency:
    """One fact's scores from its coarse sets and (None for a ``none`` atlas) its prompts' score matrices;
    ``full``: the matrices are whole, so the correlation over every neuron is recorded too."""
    rank = rank_consistency(matrices, share) if matrices is not None else math.nan
    every = (mean_pairwise_spearman([np.asarray(m, dtype=np.float64).reshape(-1) for m in matrices])
             if full and matrices is not None else None)
    return FactConsistency(fact_id, relation, mean_pairwise_jaccard(coarse), rank, len(coarse), every)


def consistency_study(atlas, write: bool = True) -> list[dict]:
    """Compute the study on every done fact of ``atlas`` (a :class:`kneuron.store.Atlas`, read in one snapshot)
    and, with ``write``, store its rows under ``consistency`` with the facts they covered. No model is needed.

    Raises:
        KneuronError: the atlas has no done fact.
    """
    from kneuron.errors import KneuronError

    with atlas.snapshot():
        facts = atlas.facts()
        if not facts:
            raise KneuronError(f"{atlas.path} has no computed facts yet: run `kneuron run --out {atlas.path}` "
                               "(or let it finish).")
        keep = atlas.params.get("keep_scores", "full")
        share = float(atlas.params.get("sparse_threshold", UNION_SHARE))
        entries = []
        for fact in facts:
            coarse = atlas.knowledge_neurons(fact.id).coarse
            matrices = (None if keep == "none" else
                        [s.scores.detach().cpu().double().numpy() for s in atlas.prompt_scores(fact.id)])
            entries.append(fact_consistency(fact.id, fact.relation, coarse, matrices, share, full=keep == "full"))
    rows = consistency_rows(entries, share)
    if write:
        atlas.write_results(STUDY, rows, facts=[fact.id for fact in facts])
    return rows


# ------------------------------------------------------------------------------------------- reading the rows


def fact_values(rows: Iterable[Mapping]) -> dict[str, dict[str, float]]:
    """Per fact id: its per-fact metrics (``jaccard``, ``rank_correlation``, ``consistent``, ``prompts``...)."""
    found: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["variant"] == "fact" and r.get("fact_id"):
            found[r["fact_id"]][r["metric"]] = r["value"]
    return dict(found)


def summary_values(rows: Iterable[Mapping], variant: str = "all", relation: str = "") -> dict[str, float]:
    """The metrics of one summary: ``all`` (overall), ``relation`` (with ``relation``), ``otsu`` or ``params``."""
    return {r["metric"]: r["value"] for r in rows
            if r["variant"] == variant and r["relation"] == relation and not r.get("fact_id")}


def relation_names(rows: Iterable[Mapping]) -> list[str]:
    return sorted({r["relation"] for r in rows if r["variant"] == "relation"})


def split_comparison(rows: Iterable[Mapping], other: Iterable[Mapping], variant: str, metric: str
                     ) -> dict[str, tuple[float, int]]:
    """Another study's per-fact ``metric`` of ``variant``, mean and count over the consistent and the inconsistent
    facts: ``{"consistent": (mean, n), "inconsistent": (mean, n)}`` (non-finite values and facts the split did not
    class are left out; a mean over no fact is NaN)."""
    flags = {fid: values.get("consistent", math.nan) for fid, values in fact_values(rows).items()}
    groups: dict[str, list[float]] = {"consistent": [], "inconsistent": []}
    for r in other:
        if r["variant"] != variant or r["metric"] != metric or not r.get("fact_id") or not math.isfinite(r["value"]):
            continue
        flag = flags.get(r["fact_id"], math.nan)
        if flag == 1.0:
            groups["consistent"].append(r["value"])
        elif flag == 0.0:
            groups["inconsistent"].append(r["value"])
    return {name: (float(np.mean(values)) if values else math.nan, len(values)) for name, values in groups.items()}


#: the per-fact metrics compared between the classes: (study, metric, label); suppress / amplify: variants kn and
#: kn_no_generic; editing: every variant of the knowledge neurons present (kn, kn_signed, kn_slot_norm...)
COMPARED = (("suppress_amplify", "suppress", "suppress KN: mean Δp/p"),
            ("suppress_amplify", "amplify", "amplify KN: mean Δp/p"),
            ("editing", "success", "edit success (share of facts)"),
            ("editing", "new_beats_old", "edit: P(new) > P(old), share of prompts"),
            ("edit_robustness", "own_new_beats_old", "edit (robustness study): P(new) > P(old), own prompts"),
            ("edit_robustness", "own_top1_new", "edit (robustness study): top-1 = new, own prompts"))
#: the studies whose per-fact figures are compared between consistent and inconsistent facts
COMPARED_STUDIES = tuple(dict.fromkeys(study for study, _, _ in COMPARED))
#: what the summaries say when a compared study has no rows: (its name in prose, the command that makes them)
MISSING_HINTS = {"suppress_amplify": ("suppress/amplify", "kneuron study suppress-amplify --run {run}"),
                 "editing": ("editing", "kneuron study editing --run {run}"),
                 "edit_robustness": ("edit robustness", "kneuron study robustness --run {run}")}


def missing_studies(comparisons: Sequence[tuple], run: object) -> list[tuple[str, str]]:
    """``(name, command)`` of each compared study that :func:`effect_comparisons` found no rows of."""
    studied = {study for study, *_ in comparisons}
    return [(name, hint.format(run=run)) for study, (name, hint) in MISSING_HINTS.items() if study not in studied]


def effect_comparisons(rows: Sequence[Mapping], studies: Mapping[str, Sequence[Mapping]]
                       ) -> list[tuple[str, str, str, dict[str, tuple[float, int]]]]:
    """``(study, variant, label, split_comparison)`` for each compared metric present in ``studies`` (study name ->
    its rows): suppress / amplify of variants ``kn`` and ``kn_no_generic`` (generic neurons left out: they mix one
    effect into every fact's), editing of every variant starting with ``kn``."""
    found = []
    for study, metric, label in COMPARED:
        other = studies.get(study) or []
        variants = (["kn", "kn_no_generic"] if study == "suppress_amplify" else
                    sorted({r["variant"] for r in other if r["variant"].startswith("kn") and r["metric"] == metric}))
        for variant in variants:
            comparison = split_comparison(rows, other, variant, metric)
            if any(n for _, n in comparison.values()):
                found.append((study, variant, label, comparison))
    return found


def split_rows(rows: Sequence[Mapping], studies: Mapping[str, Sequence[Mapping]]) -> list[dict]:
    """The other studies' per-fact values that :func:`effect_comparisons` compares, as rows of this study whose
    variant names the class: ``{study}:{variant}:consistent`` / ``...:inconsistent`` (same metric and fact; the
    fact's relation as this study's rows have it), so that the runner's aggregates give each class mean its
    interval and n."""
    flags = {fid: values.get("consistent", math.nan) for fid, values in fact_values(rows).items()}
    relation_of = {r["fact_id"]: r["relation"] for r in rows if r["variant"] == "fact" and r.get("fact_id")}
    out = []
    for study, variant, _label, _split in effect_comparisons(rows, studies):
        metric = next(m for s, m, label in COMPARED if s == study and label == _label)
        for r in studies.get(study) or []:
            if r["variant"] != variant or r["metric"] != metric or not r.get("fact_id"):
                continue
            flag = flags.get(r["fact_id"], math.nan)
            if flag in (0.0, 1.0) and math.isfinite(r["value"]):
                side = "consistent" if flag == 1.0 else "inconsistent"
                out.append(row(STUDY, f"{study}:{variant}:{side}", relation_of.get(r["fact_id"], r["relation"]),
                               r["fact_id"], metric, r["value"]))
    return out


def split_figure(aggregates: Sequence[dict], study: str, variant: str, metric: str, side: str,
                 live: tuple[float, int], *, percent: bool = True, signed: bool = False) -> str:
    """One class's mean as the summaries show it: the stored interval and n of :func:`split_rows`'s aggregate
    when it is the mean of the other study's rows now (``live``: :func:`split_comparison`'s (mean, n)); the bare
    mean with its n and what to re-run when the other study changed since, or none was stored."""
    from kneuron.studies.intervals import find, format_interval, format_mean

    mean, n = live
    if not n:
        return "–"
    stored = find(aggregates, f"{study}:{variant}:{side}", metric)
    if stored.n == n and math.isclose(stored.mean, mean, rel_tol=1e-9, abs_tol=1e-12):
        return format_interval(stored, percent=percent, signed=signed)
    return (f"{format_mean(mean, percent=percent, signed=signed)}, n = {n}, no interval stored (re-run `kneuron "
            f"study consistency`)")


def split_lines(rows: Sequence[dict], comparisons: Sequence[tuple], aggregates: Sequence[dict]) -> list[list[str]]:
    """``[measure (variant), consistent, inconsistent]`` per comparison, each class's mean with its stored interval
    and n (:func:`split_figure`)."""
    lines = []
    for study, variant, label, split in comparisons:
        metric = next(m for s, m, name in COMPARED if s == study and name == label)
        signed = "Δp/p" in label
        lines.append([f"{label} ({variant})", *(split_figure(aggregates, study, variant, metric, side, split[side],
                                                             signed=signed)
                                                for side in ("consistent", "inconsistent"))])
    return lines
