"""Editing metrics and the editing study: does an update through knowledge neurons take, and what else moves?

**Update** (Dai et al. 2022, section 5.1; official code ``6_edit_knowledge_sampled.py``). For a fact (h, r, t) whose
knowledge neurons are known, the study picks t' = another fact's answer of the same relation (seeded per fact),
builds :func:`~kneuron.interventions.update_fact`, applies it in a context, and measures on the fact's own
prompts, before and after:

* ``new_beats_old``: share of prompts where P(t') > P(t) (joint probabilities of the answers' tokens);
* ``top1_new``: share of prompts whose top-1 next token is t''s first token (the paper's *success rate*
  measures this on one random prompt per fact, i.e. the same in expectation);
* ``changed``: among prompts whose top-1 was t's first token before, the share where it no longer is (the
  official code's *change rate*, ``ori_changed``);
* ``success`` / ``success_top1``: per fact, 1 when ``new_beats_old`` / ``top1_new`` holds on more than half of
  its prompts (so the fact-level rate is the share of facts);
* ``p_old_*``, ``p_new_*``: mean probabilities before/after.

Collateral damage, as the official code measures it: ``n_other`` (5) other facts of the *same* relation
(``intra_*``) and 5 facts of *other* relations (``inter_*``), all their prompts, each with its own correct
answer: ``*_log_ppl_before`` / ``*_log_ppl_after`` are the mean over those prompts of the answer's negative
log-probability per token (log-perplexity); the paper's ΔPPL is exp(mean log-PPL after) − exp(mean log-PPL
before) over all edits (see :func:`update_summary`). Also ``*_p_change`` (mean relative change of the
correct answer's probability) and ``*_top1_kept`` (of the prompts answered right before, the share still right).

Variants: ``kn`` edits the fact's knowledge neurons; ``random`` applies the same delta to as many random
neurons of the same layers (the paper's control). With ``scale="slot_norm"`` (the official code's lambdas)
the variants are ``kn_slot_norm`` and ``random_slot_norm``; with ``sign="activation"`` (each delta times the sign
of the neuron's activation, needed for gated FFNs) they end in ``_signed`` (e.g. ``kn_signed``).

**Erase** (section 5.2): :func:`erase_study` erases a relation's ``top`` most common knowledge neurons and
measures, on the relation's facts and on facts of other relations, the correct answer's log-perplexity and
probability before and after, and top-1 accuracy.

The scoring (:func:`score`, :func:`update_metrics`, :func:`collateral`) and ROME's CounterFact scores
(:func:`counterfact_scores`, :func:`counterfact_edit`) live in :mod:`kneuron.studies.edit_scoring`; this module
re-exports them.

Rows are the atlas's long format (``study="editing"``); see :func:`kneuron.studies.metrics.row`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from kneuron.attribution.types import Neuron
from kneuron.errors import EditError, KneuronError
from kneuron.facts.fact import Fact
from kneuron.interventions.erase import count_neurons, erase_relation
from kneuron.interventions.update import (
    NeuronKey,
    Scale,
    SignRule,
    TokenRule,
    first_answer_id,
    neuron_keys,
    update_fact,
)
from kneuron.models.language_model import LanguageModel
from kneuron.studies.edit_scoring import (
    CleanScores,
    Scores,
    collateral,
    collateral_values,
    counterfact_edit,
    counterfact_scores,
    mean_of,
    queries_of,
    score,
    share_of,
    update_metrics,
)
from kneuron.studies.metrics import fact_rng, row

__all__ = ["SETTINGS", "STUDY", "CleanScores", "Scores", "choose_new_answer", "collateral", "collateral_facts",
           "collateral_values", "counterfact_edit", "counterfact_scores", "edited_facts", "editing_study",
           "erase_study", "erase_summary", "mean_of", "queries_of", "relation_counts", "sample_facts", "score",
           "share_of", "update_metrics", "update_summary", "variant_suffix"]

STUDY = "editing"


def variant_suffix(scale: Scale = "absolute", sign: SignRule = "none") -> str:
    """What a variant's name gains from its update setting: ``""``, ``"_slot_norm"``, ``"_signed"`` or
    ``"_slot_norm_signed"`` (e.g. ``kn_signed``)."""
    return ("" if scale == "absolute" else f"_{scale}") + ("" if sign == "none" else "_signed")


def choose_new_answer(lm: LanguageModel, fact: Fact, facts: Sequence[Fact], seed: int = 0) -> str | None:
    """Another fact's answer of the same relation (seeded by ``seed`` and the fact id), whose first token differs
    from the fact's answer's and that the model can produce; None when there is none."""
    prompt = fact.prompts()[0] if fact.templates else None
    old_first = first_answer_id(lm, fact.object, prompt)
    if old_first is None:
        return None
    candidates = [other for other in dict.fromkeys(f.object for f in facts
                                                   if f.relation == fact.relation and f.object != fact.object)
                  if first_answer_id(lm, other, prompt) not in (None, old_first)]
    if not candidates:
        return None
    return candidates[int(fact_rng(seed, fact.id).integers(len(candidates)))]


def sample_facts(pool: Sequence[Fact], count: int, rng: np.random.Generator) -> list[Fact]:
    """``count`` facts of ``pool`` (all when it has fewer) drawn with ``rng`` without replacement, in pool order."""
    if count <= 0 or not pool:
        return []
    picks = rng.choice(len(pool), size=min(count, len(pool)), replace=False)
    return [pool[int(i)] for i in sorted(picks)]


def collateral_facts(fact: Fact, pool: Sequence[Fact], n_other: int, seed: int,
                     others: Sequence[Fact] | None = None) -> tuple[list[Fact], list[Fact]]:
    """The facts an edit of ``fact`` is checked on for collateral damage: ``n_other`` others of its relation from
    ``pool`` (``intra``) and ``n_other`` of other relations from ``others`` (default ``pool``; ``inter``), drawn
    with :func:`~kneuron.studies.metrics.fact_rng` of ``seed`` and the fact id."""
    rng = fact_rng(seed, fact.id)
    intra = sample_facts([f for f in pool if f.relation == fact.relation and f.id != fact.id], n_other, rng)
    inter = sample_facts([f for f in (pool if others is None else others) if f.relation != fact.relation],
                         n_other, rng)
    return intra, inter


def edited_facts(facts: Sequence[Fact], neurons_by_fact: Mapping[str, Iterable[Neuron | NeuronKey]],
                 on_fact: Callable[[int, Fact], None] | None = None) -> Iterator[tuple[Fact, list[NeuronKey]]]:
    """Each fact of ``facts`` that has knowledge neurons, with their keys: the facts the editing studies edit.
    ``on_fact(n, fact)`` is called for every fact as it comes (those without neurons too: the studies' progress)."""
    for n, fact in enumerate(facts):
        if on_fact is not None:
            on_fact(n, fact)
        keys = neuron_keys(neurons_by_fact.get(fact.id, []))
        if keys:
            yield fact, keys


def _random_keys(keys: Sequence[NeuronKey], n_neurons: int, rng: np.random.Generator) -> list[NeuronKey]:
    taken, chosen = set(keys), []
    for layer, _ in keys:
        free = [i for i in range(n_neurons) if (layer, i) not in taken]
        pick = (layer, free[int(rng.integers(len(free)))])
        chosen.append(pick)
        taken.add(pick)
    return chosen


def relation_counts(facts: Sequence[Fact], neurons_by_fact: Mapping[str, Iterable[Neuron | NeuronKey]],
                    ) -> dict[str, tuple[dict[NeuronKey, int], int]]:
    """Per relation: (how many of its facts have each neuron, how many of its facts have neurons at all)."""
    lists: dict[str, list] = defaultdict(list)
    for fact in facts:
        if fact.id in neurons_by_fact:
            lists[fact.relation].append(neurons_by_fact[fact.id])
    return {relation: (dict(count_neurons(found)), len(found)) for relation, found in lists.items()}


def editing_study(
    lm: LanguageModel,
    facts: Sequence[Fact],
    neurons_by_fact: Mapping[str, Iterable[Neuron | NeuronKey]],
    *,
    pool: Sequence[Fact] | None = None,
    variants: Sequence[str] = ("kn", "random"),
    lambda_old: float = 1.0,
    lambda_new: float = 8.0,
    scale: Scale = "absolute",
    sign: SignRule = "none",
    tokens: TokenRule = "first",
    max_share: float = 0.1,
    n_other: int = 5,
    seed: int = 0,
    on_fact: Callable[[int, Fact], None] | None = None,
) -> list[dict]:
    """Update each fact of ``facts`` that has knowledge neurons to another answer of its relation and measure it.

    Args:
        facts: the facts to update (e.g. the known ones).
        neurons_by_fact: knowledge neurons by fact id; also the relation counts from which shared neurons
            (more than ``max_share`` of the relation's facts) are left out.
        pool: where new answers and collateral facts are drawn from (default ``facts``).
        variants: "kn" (the knowledge neurons) and/or "random" (as many random neurons of the same layers, same
            delta).
        lambda_old, lambda_new, scale, sign, tokens: passed to :func:`~kneuron.interventions.update_fact` (the
            random control's signs are read on the same prompts, for its own neurons).
        n_other: collateral facts per edit, of the same relation and of other relations.

    Returns:
        Long-format rows (see the module docstring); a fact that could not be edited gets ``edited`` = 0 and the
        reason in its variant's ``skipped_*`` row.
    """
    unknown = [v for v in variants if v not in ("kn", "random")]
    if unknown:
        raise KneuronError(f"Unknown editing variant(s) {unknown}; choose from 'kn' and 'random'.")
    pool = list(pool if pool is not None else facts)
    counts = relation_counts(pool, neurons_by_fact)
    clean = CleanScores(lm)
    suffix = variant_suffix(scale, sign)
    rows: list[dict] = []
    for fact, keys in edited_facts(facts, neurons_by_fact, on_fact):
        new = choose_new_answer(lm, fact, pool, seed)
        intra, inter = collateral_facts(fact, pool, n_other, seed)
        rel_counts, n_facts = counts.get(fact.relation, ({}, 1))
        options = dict(lambda_old=lambda_old, lambda_new=lambda_new, tokens=tokens, scale=scale, sign=sign, fact=fact)
        kn_edit = None
        if new is not None:
            try:
                kn_edit = update_fact(lm, keys, fact.object, new, relation_counts=rel_counts, n_facts=n_facts,
                                      max_share=max_share, **options)
            except EditError:  # e.g. every neuron shared by the relation: recorded as not edited
                kn_edit = None
        for variant in variants:
            name = variant + suffix
            if kn_edit is None:
                rows.append(row(STUDY, name, fact.relation, fact.id, "edited", 0.0))
                continue
            if variant == "kn":
                edit = kn_edit
            else:  # as many random neurons, one in the layer of each kept knowledge neuron, same delta
                chosen = _random_keys(kn_edit.neurons, lm.n_neurons, fact_rng(seed + 1, fact.id))
                edit = update_fact(lm, chosen, fact.object, new, **options)
            values = {"edited": 1.0, "neurons": float(len(edit)), **update_metrics(lm, edit, fact, new)}
            values |= collateral_values(lm, edit, clean, (("intra", intra), ("inter", inter)))
            rows.extend(row(STUDY, name, fact.relation, fact.id, metric, value) for metric, value in values.items())
    return rows


# ------------------------------------------------------------------------------------------------------ erase

def erase_study(
    lm: LanguageModel,
    facts: Sequence[Fact],
    relation: str,
    neurons_by_fact: Mapping[str, Iterable[Neuron | NeuronKey]],
    *,
    top: int = 20,
    mode: str = "zero",
    n_other: int = 50,
    random_control: bool = True,
    seed: int = 0,
) -> list[dict]:
    """Erase ``relation`` (its ``top`` most common knowledge neurons, ``mode`` "zero" or "unknown") and measure the
    relation's facts (metrics ``own_*``) and up to ``n_other`` facts of other relations (``other_*``), with the
    same number of random same-layer neurons as a control (variant ``erase_random_<mode>``).

    Metrics per fact: ``*_log_ppl_before``, ``*_log_ppl_after``, ``*_p_change``, ``*_top1_before``,
    ``*_top1_after`` (share of its prompts answered right); plus a row ``neurons`` (fact id "") per variant.
    """
    own = [f for f in facts if f.relation == relation]
    if not own:
        raise KneuronError(f"No fact of relation {relation!r} to erase.")
    counts = count_neurons(neurons_by_fact[f.id] for f in own if f.id in neurons_by_fact)
    edit = erase_relation(lm, counts, top=top, mode=mode, relation=relation)
    others = sample_facts([f for f in facts if f.relation != relation], n_other, np.random.default_rng(seed))
    edits = {f"erase_{mode}": edit}
    if random_control:
        chosen = _random_keys(edit.neurons, lm.n_neurons, np.random.default_rng(seed + 1))
        edits[f"erase_random_{mode}"] = erase_relation(lm, {k: 1 for k in chosen}, top=len(chosen), mode=mode,
                                                       relation=f"random for {relation}")
    clean = CleanScores(lm)
    rows: list[dict] = []
    for variant, current in edits.items():
        rows.append(row(STUDY, variant, relation, "", "neurons", float(len(current))))
        for tag, group in (("own", own), ("other", others)):
            for fact in group:
                queries, before = clean.of([fact])
                with current.applied(lm):
                    after = score(lm, queries)
                values = {"log_ppl_before": float(before.log_ppl.mean()), "log_ppl_after": float(after.log_ppl.mean()),
                          "p_change": float(np.mean((after.probability - before.probability) / before.probability)),
                          "top1_before": share_of(before.hit), "top1_after": share_of(after.hit)}
                rows.extend(row(STUDY, variant, fact.relation, fact.id, f"{tag}_{k}", v) for k, v in values.items())
    return rows


# ---------------------------------------------------------------------------------------------------- summaries

def _values(rows: Iterable[dict], variant: str, metric: str) -> np.ndarray:
    out = [r["value"] for r in rows if r["variant"] == variant and r["metric"] == metric and r.get("fact_id")]
    return np.array([v for v in out if math.isfinite(v)], dtype=np.float64)


def update_summary(rows: Sequence[dict], variant: str = "kn") -> dict[str, float]:
    """The study's numbers for one variant: fact and prompt success rates, and collateral as the paper reports it
    (ΔPPL = exp(mean log-PPL after) − exp(mean log-PPL before), over edits) plus mean relative probability change.
    """
    rows = [r for r in rows if r["variant"] == variant]
    edited = _values(rows, variant, "edited")
    out = {"facts": float(len(edited)), "edited": float(edited.sum()) if len(edited) else 0.0}
    for metric in ("success", "success_top1", "new_beats_old", "top1_new", "changed", "new_beats_old_before",
                   "top1_old_before", "p_old_before", "p_old_after", "p_new_before", "p_new_after", "neurons"):
        out[metric] = mean_of(_values(rows, variant, metric))
    for tag in ("intra", "inter"):
        before, after = _values(rows, variant, f"{tag}_log_ppl_before"), _values(rows, variant, f"{tag}_log_ppl_after")
        out[f"{tag}_ppl_before"] = math.exp(before.mean()) if len(before) else math.nan
        out[f"{tag}_ppl_after"] = math.exp(after.mean()) if len(after) else math.nan
        out[f"{tag}_delta_ppl"] = out[f"{tag}_ppl_after"] - out[f"{tag}_ppl_before"]
        out[f"{tag}_p_change"] = mean_of(_values(rows, variant, f"{tag}_p_change"))
        out[f"{tag}_p_change_median"] = float(np.median(v)) if len(v := _values(rows, variant, f"{tag}_p_change")) \
            else math.nan
        out[f"{tag}_top1_kept"] = mean_of(_values(rows, variant, f"{tag}_top1_kept"))
    return out


def erase_summary(rows: Sequence[dict], variant: str) -> dict[str, float]:
    """Perplexity (exp of the mean log-PPL over facts) of the erased relation and of the other relations before and
    after, their relative change, mean probability change and top-1 accuracy before/after."""
    out: dict[str, float] = {}
    neurons = [r["value"] for r in rows if r["variant"] == variant and r["metric"] == "neurons"]
    out["neurons"] = float(neurons[0]) if neurons else math.nan
    for tag in ("own", "other"):
        before, after = _values(rows, variant, f"{tag}_log_ppl_before"), _values(rows, variant, f"{tag}_log_ppl_after")
        out[f"{tag}_facts"] = float(len(before))
        out[f"{tag}_ppl_before"] = math.exp(before.mean()) if len(before) else math.nan
        out[f"{tag}_ppl_after"] = math.exp(after.mean()) if len(after) else math.nan
        out[f"{tag}_ppl_change"] = out[f"{tag}_ppl_after"] / out[f"{tag}_ppl_before"] - 1
        out[f"{tag}_p_change"] = mean_of(_values(rows, variant, f"{tag}_p_change"))
        out[f"{tag}_top1_before"] = mean_of(_values(rows, variant, f"{tag}_top1_before"))
        out[f"{tag}_top1_after"] = mean_of(_values(rows, variant, f"{tag}_top1_after"))
    return out



# --------------------------------------------------------------------------------------------------------- runner

#: the update settings the study runs: (scale, sign); the paper's formula first
SETTINGS: tuple[tuple[Scale, SignRule], ...] = (("absolute", "none"), ("absolute", "activation"),
                                                  ("slot_norm", "none"))
