"""How far a cheaper attribution estimator agrees with exact integrated gradients, on an atlas IG computed.

For each compared estimator and each fact, the estimator scores the fact's prompts anew and is compared with the
integrated-gradients scores and refined neurons the atlas holds:

* ``spearman``: Spearman's rank correlation of the estimator's scores with IG's, per prompt, averaged over the
  fact's prompts (ties get average ranks; a prompt whose scores are constant on either side has none and is
  left out of the mean). Over **all** neurons when the atlas keeps full score matrices. A sparse atlas keeps, per
  fact, only the neurons where some prompt scores ``|score| >= 0.05 x`` its maximum (the kept union, see
  :mod:`kneuron.store.scores`); IG's other scores are unknown, so the correlation is taken over the kept neurons
  only and stored as ``spearman_kept`` instead. That is the correlation among the neurons IG finds relevant,
  not over the whole layer (the many near-zero scores a full matrix adds are left out, and they would mostly
  raise the figure). ``spearman_neurons`` records how many neurons each fact's correlation is over.
* ``top_recall``: the share of IG's ten highest-scoring neurons of a prompt that are among the estimator's ten
  highest, averaged over the prompts (``top`` sets the ten; the ``params`` row records it). In a sparse atlas
  IG's top ten is taken among the kept neurons, which is exact whenever a prompt's tenth score is at least 0.05
  of its maximum (every prompt of a real model: SmolLM2 keeps about 1,200 neurons per prompt).
* ``refined_jaccard``: |A ∩ B| / |A ∪ B| of the estimator's refined neurons (its scores through
  :func:`~kneuron.attribution.refine` with the atlas's threshold and share) and IG's refined neurons from the
  atlas; 1 when both are empty (they agree), 0 when only one is.
* the causal check, by :func:`~kneuron.studies.suppress_amplify.suppress_amplify` itself (no other
  patching code): ``suppress`` is the mean Δp/p of the fact's prompts when the estimator's refined neurons are
  set to 0 at the answer position, ``suppress_random`` the same for its seeded random control (as many random
  neurons from the same layers), ``suppress_ig`` IG's own refined neurons' (the same value in every estimator's
  rows, repeated so that each estimator's means are over the same facts). Facts where a set is empty have no
  such row (``neurons`` and ``neurons_ig`` say how many were patched).
* specificity (:mod:`kneuron.studies.estimator_specificity`), for each estimator and for ``ig``:
  ``suppress_other``, the mean Δp/p on one prompt of each of ``other_facts`` facts of other relations when the
  fact's refined neurons are set to 0 (drawn as the suppress / amplify study draws them, so ``ig``'s equal its
  ``suppress_other``); ``generic_fraction``, the share of the fact's refined neurons that are generic (refined for
  more than ``generic_share`` of the compared facts under the same estimator: the generic study's definition);
  over all facts (rows without a fact) ``generic_neurons`` (how many) and ``most_shared`` (the share of the facts
  whose refined set holds the most shared neuron). For each estimator also ``identical``: 1 when its refined set
  of the fact is IG's, else 0.
* ``seconds_per_prompt``: wall-clock seconds of the estimator's ``attribute`` call on the fact's prompts (one call
  per fact) divided by its prompts, measured here. Variant ``ig`` carries IG's from the atlas
  (``compute_seconds`` of the fact / its prompts: measured when the atlas was made, and it includes refining and
  the probabilities the run also computed), passed in as ``ig_seconds``.

Rows: study ``estimators``, variant the estimator's label (e.g. ``gxa``, ``ig-gauss5``; ``ig`` for IG's own
figures), the fact's relation and id. Rows without a fact: ``seconds_per_prompt`` of each variant over all facts
(total seconds / total prompts), ``generic_neurons`` and ``most_shared``, and variant ``params`` (seed, top,
threshold, share (NaN for "adaptive", ``share_adaptive`` 1 then), ``full_scores``, ``other_facts``,
``generic_share``). An estimator that raises :class:`~kneuron.errors.KneuronError`
(e.g. one that refuses the model) is skipped as a whole: its rows are dropped and ``on_skip`` is told.

Example:
    >>> rows = estimator_agreement(lm, facts, scores_by_fact, refined_by_fact,
    ...                            {"gxa": GradientTimesActivation()}, threshold=0.2, share="adaptive")
    >>> summarize(rows, "gxa", "refined_jaccard").mean
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from kneuron.attribution.estimators import Estimator
from kneuron.attribution.selection import refine
from kneuron.attribution.types import Neuron, NeuronScores
from kneuron.errors import KneuronError
from kneuron.facts.fact import Fact
from kneuron.models.language_model import LanguageModel
from kneuron.studies.estimator_specificity import generic_measures, other_suppressions
from kneuron.studies.metrics import NeuronKey, row
from kneuron.studies.suppress_amplify import encode_facts, keys_of, suppress_amplify

STUDY = "estimators"
#: how many top neurons per prompt the recall compares
TOP = 10
#: variants the study's own rows use (the reference IG from the atlas, the settings)
RESERVED = ("ig", "params")
#: the label of exact IG measured again in the study (``--estimators ig``)
EXACT_LABEL = "ig-exact"


# ------------------------------------------------------------------------------------------- the metrics


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` (ascending), tied values sharing the mean of their ranks."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size, dtype=np.float64)
    ordered = values[order]
    # the start of each run of equal values, and its end
    starts = np.r_[0, np.flatnonzero(np.diff(ordered) != 0) + 1]
    ends = np.r_[starts[1:], values.size]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0  # mean of the ranks start+1 .. end
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two equally long arrays (average ranks for ties); NaN when either side is
    constant or shorter than two."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if a.size != b.size:
        raise KneuronError(f"Spearman needs two equally long score vectors; got {a.size} and {b.size}.")
    if a.size < 2:
        return math.nan
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / norm if norm > 0 else math.nan


def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest of ``values`` (flat), largest first; ties by the lower index."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    return np.argsort(-flat, kind="stable")[:k]


def top_recall(reference: np.ndarray, estimate: np.ndarray, k: int = TOP) -> float:
    """The share of ``reference``'s ``k`` highest entries that are among ``estimate``'s ``k`` highest (same
    shape; ``k`` capped at their size)."""
    k = min(k, np.asarray(reference).size)
    if k <= 0:
        return math.nan
    found = set(top_indices(reference, k).tolist()) & set(top_indices(estimate, k).tolist())
    return len(found) / k


def jaccard(a: Sequence[Neuron | NeuronKey], b: Sequence[Neuron | NeuronKey]) -> float:
    """|A ∩ B| / |A ∪ B| of two neuron sets; 1.0 when both are empty (they agree)."""
    left, right = set(keys_of(a)), set(keys_of(b))
    union = left | right
    return len(left & right) / len(union) if union else 1.0


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def score_agreement(reference: Sequence[NeuronScores], estimate: Sequence[NeuronScores],
                    kept: np.ndarray | None = None, k: int = TOP) -> tuple[float, float]:
    """(mean Spearman, mean top-``k`` recall) over a fact's prompts of the estimate against the reference.

    ``kept``: the flat indices (``layer * neurons + neuron``) a sparse atlas keeps for the fact; both are then
    taken over those neurons only (the reference is unknown elsewhere).
    """
    if len(reference) != len(estimate):
        raise KneuronError(f"The estimate has {len(estimate)} prompts' scores and the reference {len(reference)}.")
    rhos, recalls = [], []
    for ref, est in zip(reference, estimate, strict=True):
        a = ref.scores.detach().cpu().double().numpy().reshape(-1)
        b = est.scores.detach().cpu().double().numpy().reshape(-1)
        if a.size != b.size:
            raise KneuronError(f"The estimate scores {b.size} neurons and the reference {a.size}: not one model.")
        if kept is not None:
            a, b = a[kept], b[kept]
        rhos.append(spearman(a, b))
        recalls.append(top_recall(a, b, k))
    return _finite_mean(rhos), _finite_mean(recalls)


# -------------------------------------------------------------------------------------------- the study


def _suppressions(lm: LanguageModel, facts: Sequence[Fact], neurons: Mapping[str, Sequence[Neuron | NeuronKey]],
                  queries: Mapping, seed: int) -> dict[str, dict[str, float]]:
    """Per fact: ``{"kn": Δp/p, "random": Δp/p}`` of suppressing its neurons / the random control, from the
    suppress/amplify study itself (no other facts, no generic neurons)."""
    found: dict[str, dict[str, float]] = {}
    for r in suppress_amplify(lm, facts, neurons, other_facts=0, seed=seed, queries=queries):
        if r["metric"] == "suppress" and r["variant"] in ("kn", "random"):
            found.setdefault(r["fact_id"], {})[r["variant"]] = r["value"]
    return found


def estimator_agreement(
    lm: LanguageModel,
    facts: Sequence[Fact],
    ig_scores: Mapping[str, Sequence[NeuronScores]],
    ig_refined: Mapping[str, Sequence[Neuron]],
    estimators: Mapping[str, Estimator],
    *,
    threshold: float,
    share: float | str,
    kept: Mapping[str, np.ndarray] | None = None,
    ig_seconds: Mapping[str, float] | None = None,
    seed: int = 0,
    top: int = TOP,
    other_facts: int = 5,
    generic_share: float = 0.1,
    on_fact: Callable[[Fact], None] | None = None,
    on_skip: Callable[[str, KneuronError], None] | None = None,
) -> list[dict]:
    """Compare each of ``estimators`` with integrated gradients on ``facts`` and return long-format rows (see
    the module docstring).

    Args:
        lm: the model the IG scores are of.
        facts: the facts (each needs its IG scores in ``ig_scores``).
        ig_scores: per fact id, IG's scores of each of its prompts (dense; read one fact at a time, so a lazy
            mapping keeps one fact in memory).
        ig_refined: per fact id, IG's refined neurons.
        estimators: the estimators to compare, by the label their rows carry.
        threshold, share: the refine settings of the IG neurons (the atlas's), used for the estimators too.
        kept: per fact id, the flat indices a sparse atlas keeps (None: the scores are full).
        ig_seconds: per fact id, the seconds IG took for the fact when the atlas was made.
        seed: seeds the random controls.
        top: how many top neurons the recall compares (10).
        other_facts: how many facts of other relations (one prompt each) measure ``suppress_other`` (0: none).
        generic_share: the generic study's share: a neuron refined for more than this share of ``facts`` is
            generic (``generic_fraction``, ``generic_neurons``, ``most_shared``).
        on_fact: called after each fact (progress).
        on_skip: called with (label, error) when an estimator raises a KneuronError and is skipped.
    """
    reserved = [label for label in estimators if label in RESERVED]
    if reserved:
        raise KneuronError(f"Label the compared estimators other than {' or '.join(map(repr, RESERVED))} (the "
                           f"reference's and the settings' rows), e.g. {EXACT_LABEL!r} for exact IG measured again.")
    facts = list(facts)
    queries = encode_facts(lm, facts)
    ig_sets = {fact.id: keys_of(ig_refined.get(fact.id, ())) for fact in facts}
    ig_suppress = _suppressions(lm, facts, ig_sets, queries, seed)
    specific = {"seed": seed, "count": other_facts}
    ig_other = other_suppressions(lm, facts, {"ig": ig_sets}, queries, **specific)["ig"]
    active = dict(estimators)
    rows: dict[str, list[dict]] = {label: [] for label in active}
    refined: dict[str, dict[str, list[NeuronKey]]] = {label: {} for label in active}
    seconds: dict[str, list[tuple[float, int]]] = {label: [] for label in active}
    for fact in facts:
        reference = list(ig_scores[fact.id])
        fact_kept = None if kept is None else np.asarray(kept[fact.id], dtype=np.int64)
        for label, estimator in list(active.items()):
            try:
                start = time.perf_counter()
                estimate = estimator.attribute(lm, queries[fact.id])
                spent = time.perf_counter() - start
                rho, recall = score_agreement(reference, estimate, fact_kept, top)
                mine = refine(estimate, share=share, threshold=threshold, fact=fact)
            except KneuronError as exc:
                del active[label], rows[label], refined[label], seconds[label]
                if on_skip:
                    on_skip(label, exc)
                continue
            refined[label][fact.id] = mine.keys
            seconds[label].append((spent, len(estimate)))
            width = reference[0].scores.numel() if reference else 0
            for metric, value in (
                    ("prompts", len(estimate)),
                    ("spearman" if fact_kept is None else "spearman_kept", rho),
                    ("spearman_neurons", width if fact_kept is None else fact_kept.size),
                    ("top_recall", recall),
                    ("refined_jaccard", jaccard(mine.keys, ig_sets[fact.id])),
                    ("neurons", len(mine.keys)),
                    ("neurons_ig", len(ig_sets[fact.id])),
                    ("seconds_per_prompt", spent / len(estimate) if estimate else math.nan)):
                rows[label].append(row(STUDY, label, fact.relation, fact.id, metric, value))
        if on_fact:
            on_fact(fact)
    result: list[dict] = []
    for label in active:
        measured = _suppressions(lm, facts, refined[label], queries, seed)
        for fact in facts:
            values = measured.get(fact.id, {})
            for metric, value in (("suppress", values.get("kn")), ("suppress_random", values.get("random")),
                                  ("suppress_ig", ig_suppress.get(fact.id, {}).get("kn"))):
                if value is not None:
                    rows[label].append(row(STUDY, label, fact.relation, fact.id, metric, value))
        rows[label] += _specificity_rows(label, facts, refined[label], ig_sets, generic_share, other_suppressions(
            lm, facts, {label: refined[label]}, queries, **specific)[label])
        spent, prompts = (sum(s for s, _ in seconds[label]), sum(n for _, n in seconds[label]))
        rows[label].append(row(STUDY, label, "", "", "seconds_per_prompt", spent / prompts if prompts else math.nan))
        result += rows[label]
    result += _ig_rows(facts, {fact.id: len(queries[fact.id]) for fact in facts}, ig_sets, ig_suppress, ig_seconds)
    result += _specificity_rows("ig", facts, ig_sets, None, generic_share, ig_other)
    result += [row(STUDY, "params", "", "", "seed", seed), row(STUDY, "params", "", "", "top", top),
               row(STUDY, "params", "", "", "threshold", threshold),
               row(STUDY, "params", "", "", "share", share if isinstance(share, (int, float)) else math.nan),
               row(STUDY, "params", "", "", "share_adaptive", float(share == "adaptive")),
               row(STUDY, "params", "", "", "full_scores", float(kept is None)),
               row(STUDY, "params", "", "", "other_facts", other_facts),
               row(STUDY, "params", "", "", "generic_share", generic_share)]
    return result


def _specificity_rows(label: str, facts: Sequence[Fact], sets: Mapping[str, list[NeuronKey]],
                      ig_sets: Mapping[str, list[NeuronKey]] | None, share: float,
                      other: Mapping[str, float]) -> list[dict]:
    """The specificity rows of one variant (see the module docstring): per fact ``suppress_other``,
    ``generic_fraction`` and (against ``ig_sets``, when given) ``identical``; over all facts ``generic_neurons``
    and ``most_shared``."""
    fractions, generic, most = generic_measures({fact.id: sets.get(fact.id, []) for fact in facts}, share)
    out = []
    for fact in facts:
        if fact.id in other:
            out.append(row(STUDY, label, fact.relation, fact.id, "suppress_other", other[fact.id]))
        if fact.id in fractions:
            out.append(row(STUDY, label, fact.relation, fact.id, "generic_fraction", fractions[fact.id]))
        if ig_sets is not None:
            same = set(sets.get(fact.id, [])) == set(ig_sets.get(fact.id, []))
            out.append(row(STUDY, label, fact.relation, fact.id, "identical", float(same)))
    return out + [row(STUDY, label, "", "", "generic_neurons", generic),
                  row(STUDY, label, "", "", "most_shared", most)]


def _ig_rows(facts: Sequence[Fact], prompt_counts: Mapping[str, int], ig_sets: Mapping[str, list[NeuronKey]],
             ig_suppress: Mapping[str, Mapping[str, float]], ig_seconds: Mapping[str, float] | None) -> list[dict]:
    """Variant ``ig``: IG's own neurons, suppression, random control and (from the atlas) seconds per prompt."""
    out, total, prompts = [], 0.0, 0
    for fact in facts:
        out.append(row(STUDY, "ig", fact.relation, fact.id, "neurons", len(ig_sets[fact.id])))
        for metric, key in (("suppress", "kn"), ("suppress_random", "random")):
            if key in ig_suppress.get(fact.id, {}):
                out.append(row(STUDY, "ig", fact.relation, fact.id, metric, ig_suppress[fact.id][key]))
        spent = (ig_seconds or {}).get(fact.id)
        count = prompt_counts[fact.id]
        if spent is not None and math.isfinite(spent) and count:
            out.append(row(STUDY, "ig", fact.relation, fact.id, "seconds_per_prompt", spent / count))
            total, prompts = total + spent, prompts + count
    if prompts:
        out.append(row(STUDY, "ig", "", "", "seconds_per_prompt", total / prompts))
    return out


# ---------------------------------------------------------------------------------------- choosing estimators

#: the label of Gauss–Legendre integrated gradients with N points (``ig-gauss5``)
GAUSS_PREFIX = "ig-gauss"


def estimator_label(name: str) -> str:
    """The variant a command-line estimator name's rows carry: ``ig-exact`` for ``ig``, else the name."""
    return EXACT_LABEL if name == "ig" else name


def default_estimators() -> list[str]:
    """Every registered estimator other than exact IG that is compared by default
    (:attr:`~kneuron.attribution.estimator_base.Estimator.compared_by_default`), then Gauss–Legendre IG with 5
    points (``ig-gauss5``)."""
    from kneuron.attribution.estimators import ESTIMATORS, IntegratedGradients, estimator_names

    return [name for name in estimator_names()
            if name != IntegratedGradients.name and ESTIMATORS[name].compared_by_default] + [f"{GAUSS_PREFIX}5"]


def estimator_for(label: str, params: Mapping[str, object]) -> Estimator:
    """The estimator a label names, with the atlas's ``params`` (its objective; exact IG's steps and alphas, and
    its threshold, for the estimators that take them):
    ``ig`` or ``ig-exact`` (exact IG as the atlas ran it, measured again; its rows say ``ig-exact``),
    ``ig-gaussN`` (N-point Gauss–Legendre IG), or a registered name (``gxa``, ...).

    Raises:
        KneuronError: an unknown label.
    """
    from kneuron.attribution.estimators import IntegratedGradients, estimator_named, estimator_names

    objective = str(params.get("objective", "prob"))
    if label in (IntegratedGradients.name, EXACT_LABEL):
        return IntegratedGradients(steps=int(params.get("steps", 20)), alphas=params.get("alphas", "right"),
                                   objective=objective)
    if label.startswith(GAUSS_PREFIX):
        points = label.removeprefix(GAUSS_PREFIX)
        if not points.isdigit() or int(points) < 1:
            raise KneuronError(f"Estimator {label!r}: write {GAUSS_PREFIX}N with N the number of Gauss–Legendre "
                               "points, e.g. ig-gauss5.")
        return IntegratedGradients(steps=int(points), alphas="gauss", objective=objective)
    if label not in estimator_names():
        raise KneuronError(f"Unknown estimator {label!r}: use {', '.join(estimator_names())} or "
                           f"{GAUSS_PREFIX}N (N-point Gauss–Legendre IG).")
    # the atlas's run settings, for an estimator that takes them (two-stage-ig: IG's steps and alphas, the
    # coarse threshold and share it aims at); estimator_named gives each estimator only the settings it takes
    settings = {key: params[key] for key in ("steps", "alphas", "threshold", "share") if params.get(key) is not None}
    return estimator_named(label, **settings, objective=objective)


def exact_ig_refusal(params: Mapping[str, object]) -> str | None:
    """Why an atlas with these params cannot be the reference (None when it was computed with exact IG: no
    ``estimator`` recorded, or ``ig``, and no ``screen``)."""
    name = params.get("estimator", "ig")
    if name != "ig":
        return f"it was computed with the {name!r} estimator"
    if params.get("screen"):
        return f"it was computed with screened IG (exact IG in {params['screen']} screened layers only)"
    if params.get("keep_scores") == "none":
        return "it keeps no score matrices (--keep-scores none)"
    return None


# -------------------------------------------------------------------------------------------- summaries


def agreement_summary(rows: Sequence[dict]) -> list[dict[str, object]]:
    """One dict per compared estimator (in the rows' order): ``estimator``, ``facts``, ``spearman`` and
    ``spearman_over`` ("all" or "kept" neurons) with ``spearman_neurons`` (mean per fact), ``top_recall``,
    ``refined_jaccard``, ``suppress``, ``suppress_ig``, ``suppress_random`` (means over facts, see
    :func:`~kneuron.studies.metrics.summarize`), ``seconds_per_prompt`` and ``speedup`` (IG's seconds per
    prompt from the atlas over it; NaN when unknown); the specificity beside them: ``neurons`` (refined per fact),
    ``identical`` (the share of facts whose refined set is IG's) with ``identical_facts`` (how many),
    ``suppress_other``, ``generic_fraction`` (means over facts), ``generic_neurons`` and ``most_shared`` (over all
    facts); then one for ``ig`` (its suppression, random control, seconds and specificity)."""
    from kneuron.studies.metrics import summarize

    labels = list(dict.fromkeys(r["variant"] for r in rows if r["variant"] not in ("ig", "params")))
    overall = {(r["variant"], r["metric"]): r["value"] for r in rows if not r["fact_id"]}
    ig_seconds = overall.get(("ig", "seconds_per_prompt"), math.nan)
    found = []
    for label in labels:
        kept = summarize(rows, label, "spearman_kept")
        rho = kept if kept.n else summarize(rows, label, "spearman")
        mine = overall.get((label, "seconds_per_prompt"), math.nan)
        found.append({
            "estimator": label, "facts": summarize(rows, label, "prompts").n, "spearman": rho.mean,
            "spearman_over": "kept" if kept.n else "all",
            "spearman_neurons": summarize(rows, label, "spearman_neurons").mean,
            **{metric: summarize(rows, label, metric).mean
               for metric in ("top_recall", "refined_jaccard", "suppress", "suppress_ig", "suppress_random",
                              "identical")},
            "identical_facts": sum(r["value"] for r in rows if r["variant"] == label and r["metric"] == "identical"
                                   and r["fact_id"]),
            **_specificity(rows, overall, label),
            "seconds_per_prompt": mine, "speedup": ig_seconds / mine if mine > 0 else math.nan})
    ig = {metric: summarize(rows, "ig", metric).mean for metric in ("suppress", "suppress_random")}
    found.append({"estimator": "ig", "facts": summarize(rows, "ig", "neurons").n, **ig,
                  **_specificity(rows, overall, "ig"), "seconds_per_prompt": ig_seconds})
    return found


def _specificity(rows: Sequence[dict], overall: Mapping[tuple[str, str], float], label: str) -> dict[str, float]:
    from kneuron.studies.metrics import summarize

    return {**{metric: summarize(rows, label, metric).mean
               for metric in ("neurons", "suppress_other", "generic_fraction")},
            **{metric: overall.get((label, metric), math.nan) for metric in ("generic_neurons", "most_shared")}}


__all__ = ["EXACT_LABEL", "GAUSS_PREFIX", "RESERVED", "STUDY", "TOP", "agreement_summary", "average_ranks",
           "default_estimators", "estimator_agreement", "estimator_for", "estimator_label", "exact_ig_refusal",
           "jaccard", "score_agreement", "spearman", "top_indices", "top_recall"]
