"""Edits under Niu et al.'s tests (ICLR 2024): does a knowledge-neuron update hold beyond the fact's own prompts?

Each fact with knowledge neurons is updated as the editing study does (:mod:`kneuron.studies.editing`: t' =
another answer of its relation from :func:`~kneuron.studies.editing.choose_new_answer`, the update of
:func:`~kneuron.interventions.update_fact`, neurons shared by more than 10% of the relation's facts left out), and
measured, before and after, on:

* ``own_*``: the fact's own prompts (those the neurons were found with);
* ``alias_*``: **synonym invariance**: the same templates with each alias of the subject in its place ("the French
  Republic", "the UK"; :mod:`kneuron.facts.robustness`); facts without aliases have none;
* ``heldout_*`` / ``kept_*``: **paraphrases not used to find the neurons**: ``held_out`` templates of the fact
  (seeded per fact) are left out, the refined set is recomputed from the kept prompts' stored coarse sets exactly as
  :func:`~kneuron.attribution.selection.refine` refines (no attribution is rerun; ``refined_equal`` says whether the
  recomputation from all prompts gives the atlas's set), the update goes through those neurons (signs, when used,
  read on the kept prompts only), and is measured on the held-out prompts and on the kept ones;
  ``heldout_full_*`` is the ordinary update (neurons from all prompts) on the same held-out prompts;
* ``reverse_new_*`` / ``reverse_old_*``: **bijective symmetry**, for facts of one-to-one relations (capital, chemical
  symbol, the currencies only one country uses): after France → Rome, the reverse prompts of the new answer
  ("Rome is the capital of") answered with the edited subject (France): its probability before and after
  (``reverse_new_p_*``), top-1 (``reverse_new_top1_*``), and whether it beats the new answer's own subject
  (``reverse_new_beats_owner*``: P(France) > P(Italy)); and the old reverse fact ("Paris is the capital of" →
  France): ``reverse_old_top1_*`` and ``reverse_old_kept`` (of the prompts it was right on, the share still right).
  For these facts t' is drawn among the relation's one-to-one answers the model knows, so that the reverse query
  has one answer (for capital and chemical symbol this is the editing study's t'; for currency it may differ; when
  there is none, t' is drawn as usual and the symmetry test skipped for the fact);
* ``neighborhood*``: **CounterFact's neighbourhood score** (Meng et al. 2022) on the built-in set: ``n_neighbours``
  other facts of the same relation (not answered t'), one prompt each (a template drawn per neighbour, as
  CounterFact has one prompt per neighbour): the share where their own answer beats t' (mean per-token
  log-probability, as in ROME), before and after, and the mean margin (``neighborhood_diff*``).
  (CounterFact's neighbours share the edited fact's true object; here they are the relation's other subjects.)

For each prompt set, **probability vs top-1** (Niu et al.: edits move probabilities more than they change top-1
predictions): ``*_p_rose`` is the share of prompts where the probability of the target's first token (the token
top-1 is about) rose, ``*_top1_became`` the share whose top-1 became the target (it was not before); also
``*_p_joint_rose`` (the whole answer's probability: for a multi-token answer it can fall while the first token
rises, since the edit pushes every position towards that token), ``*_new_beats_old`` (joint P(t') > P(t), as the
editing study) and ``*_top1_new``.

Rows are long format in the study ``edit_robustness``; variant ``kn`` (the paper's formula), ``kn_signed`` (each
delta times the sign of the neuron's mean activation, as gated FFNs need) and ``kn_slot_norm`` as in the editing
study. Every edit is applied in a context and undone bit-exactly, also after an exception.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from kneuron.attribution.selection import refined_keys
from kneuron.attribution.types import Neuron
from kneuron.errors import EditError, FactError, KneuronError
from kneuron.facts.encoding import EncodedQuery, encode
from kneuron.facts.fact import Fact, Prompt
from kneuron.facts.known import head_index
from kneuron.facts.robustness import RobustnessData, robustness_data
from kneuron.interventions.edits import Edit
from kneuron.interventions.update import NeuronKey, Scale, SignRule, update_fact
from kneuron.models.language_model import LanguageModel
from kneuron.models.partial_forward import logits_at
from kneuron.studies.editing import (
    Scores,
    choose_new_answer,
    edited_facts,
    mean_of,
    relation_counts,
    sample_facts,
    share_of,
    variant_suffix,
)
from kneuron.studies.metrics import by_length, fact_rng, padded, row

STUDY = "edit_robustness"
#: the prompt sets every fact is measured on (those that exist for it), in report order
GROUPS = ("own", "alias", "kept", "heldout", "heldout_full")


#: how a variant makes its edit of a fact: ``make(fact, new, neurons, prompts)``, ``prompts`` the prompts it may
#: learn from (None: all the fact's; the held-out test passes the kept ones); raises EditError (or FactError)
#: when it cannot (the fact is then recorded as not edited)
EditMaker = Callable[[Fact, str, Sequence[NeuronKey], Sequence[Prompt] | None], Edit]
#: what an edit that cannot be made raises (recorded as ``edited`` = 0, not an error of the study)
UNEDITABLE = (EditError, FactError)


def kn_maker(counts: Mapping, scale: Scale, sign: SignRule, options: Mapping, lm: LanguageModel) -> EditMaker:
    """The knowledge-neuron update of :func:`~kneuron.interventions.update_fact` with these settings (neurons
    shared by more than ``options["max_share"]`` of the relation's facts left out, by ``counts``)."""
    def make(fact: Fact, new: str, keys: Sequence[NeuronKey], prompts: Sequence[Prompt] | None) -> Edit:
        if not keys:
            raise EditError(f"{fact.id} has no knowledge neurons to update.")
        rel_counts, n_facts = counts.get(fact.relation, ({}, 1))
        extra = {} if prompts is None else {"prompts": list(prompts)}
        return update_fact(lm, list(keys), fact.object, new, relation_counts=rel_counts, n_facts=n_facts,
                           scale=scale, sign=sign, fact=fact, **extra, **options)
    return make


def variant_name(scale: Scale = "absolute", sign: SignRule = "none") -> str:
    """``kn``, ``kn_signed``, ``kn_slot_norm``, ``kn_slot_norm_signed``: as the editing study names its variants."""
    return "kn" + variant_suffix(scale, sign)


@dataclass(frozen=True)
class TokenScores(Scores):
    """:class:`~kneuron.studies.editing.Scores` plus the probability of the answer's first token at the position
    whose top-1 is read (the quantity top-1 is about: a multi-token answer's joint probability can fall while its
    first token becomes top-1, when the edit, written at every position, also pushes the later positions)."""

    first_probability: np.ndarray = field(default_factory=lambda: np.zeros(0))


FIELDS = ("probability", "mean_logprob", "top1", "first", "first_probability")


def _read_input(lm: LanguageModel, query: EncodedQuery) -> tuple[int, ...]:
    """The ids a query's scores depend on: a causal model reads nothing after the position predicting the answer's
    last token, so two answers of one token after the same prompt share one input."""
    ids = query.input_ids
    if lm.kind == "causal":
        ids = ids[: max(query.position, *query.target_positions) + 1]
    return tuple(int(i) for i in ids)


@torch.no_grad()
def score(lm: LanguageModel, queries: Sequence[EncodedQuery], *, batch_size: int = 64) -> TokenScores:
    """:func:`kneuron.studies.editing.score` in fewer forward passes: each distinct input once (see
    :func:`_read_input`), right-padded batches, the head computed only where it is read; the same numbers up to
    float rounding."""
    n = len(queries)
    prob, mean, top1, first_prob = np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n)
    first = np.array([q.answer_ids[0] for q in queries], dtype=np.int64)
    users: dict[tuple[int, ...], list[int]] = {}
    for i, query in enumerate(queries):
        users.setdefault(_read_input(lm, query), []).append(i)
    inputs = list(users)
    for batch in by_length([torch.tensor(ids) for ids in inputs], batch_size):
        ids, mask = padded(lm, [torch.tensor(inputs[b]) for b in batch])
        # every position any of the input's queries reads: the top-1 position and the answer's target positions
        read = [sorted({p for i in users[inputs[b]] for p in (queries[i].position, *queries[i].target_positions)})
                for b in batch]
        index = head_index(read)
        with logits_at(lm, index) as sliced:
            logits = lm.model(input_ids=ids, attention_mask=mask).logits
        for r, b in enumerate(batch):
            at = torch.arange(len(read[r])) if sliced else torch.tensor(read[r])
            log_softmax = torch.log_softmax(logits[r, at.to(logits.device)].double(), dim=-1)
            where = {p: k for k, p in enumerate(read[r])}
            for i in users[inputs[b]]:
                query = queries[i]
                rows = torch.tensor([where[p] for p in query.target_positions], device=logits.device)
                answer = torch.tensor(query.answer_ids, device=logits.device)
                log_probs = log_softmax[rows].gather(-1, answer[:, None])
                prob[i], mean[i] = float(log_probs.sum().exp()), float(log_probs.mean())
                top1[i] = int(log_softmax[where[query.position]].argmax())
                first_prob[i] = float(log_softmax[where[query.position], query.answer_ids[0]].exp())
    return TokenScores(prob, mean, top1, first, first_prob)


class _Batch:
    """Queries of several named sets, scored together before and under an edit (one pass each)."""

    def __init__(self) -> None:
        self.sets: dict[str, list[EncodedQuery]] = {}

    def add(self, name: str, queries: list[EncodedQuery]) -> None:
        self.sets[name] = queries

    def scored(self, lm: LanguageModel, edit: Edit | None = None) -> dict[str, TokenScores]:
        flat = [q for queries in self.sets.values() for q in queries]
        if not flat:
            return {}
        if edit is None:
            joined = score(lm, flat)
        else:
            with edit.applied(lm):
                joined = score(lm, flat)
        out, start = {}, 0
        for name, queries in self.sets.items():
            end = start + len(queries)
            out[name] = TokenScores(*(getattr(joined, f)[start:end] for f in FIELDS))
            start = end
        return out


def _queries(lm: LanguageModel, prompts: Sequence[Prompt], answer: str) -> list[EncodedQuery]:
    return [encode(lm, p, answer) for p in prompts]


def pair_metrics(prefix: str, before_old: TokenScores, before_new: TokenScores, after_old: TokenScores,
                 after_new: TokenScores) -> dict[str, float]:
    """The update's effect on one prompt set: old answer vs new answer, before and after (see the module docstring).
    """
    if not len(before_old):
        return {}
    return {
        f"{prefix}_new_beats_old_before": share_of(before_new.probability > before_old.probability),
        f"{prefix}_new_beats_old": share_of(after_new.probability > after_old.probability),
        f"{prefix}_top1_new_before": share_of(before_new.hit), f"{prefix}_top1_new": share_of(after_new.hit),
        f"{prefix}_top1_became": share_of(after_new.hit & ~before_new.hit),
        f"{prefix}_p_rose": share_of(after_new.first_probability > before_new.first_probability),
        f"{prefix}_p_joint_rose": share_of(after_new.probability > before_new.probability),
        f"{prefix}_p_first_new_before": mean_of(before_new.first_probability),
        f"{prefix}_p_first_new_after": mean_of(after_new.first_probability),
        f"{prefix}_p_new_before": mean_of(before_new.probability),
        f"{prefix}_p_new_after": mean_of(after_new.probability),
        f"{prefix}_p_old_before": mean_of(before_old.probability),
        f"{prefix}_p_old_after": mean_of(after_old.probability),
        f"{prefix}_top1_old_kept": share_of(after_old.hit[before_old.hit]) if before_old.hit.any() else math.nan,
        f"{prefix}_prompts": float(len(before_old)),
    }


def held_out_split(fact: Fact, held_out: int, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held-out) prompt indices of ``fact``: ``held_out`` of its templates chosen at random (seeded by
    ``seed`` and the fact id), at least two kept; ([all], []) when the fact has too few templates."""
    n = len(fact.templates)
    count = min(held_out, n - 2)
    if count <= 0:
        return list(range(n)), []
    chosen = set(int(i) for i in fact_rng(seed + 2, fact.id).choice(n, size=count, replace=False))
    return [i for i in range(n) if i not in chosen], sorted(chosen)


def held_out_neurons(coarse: Sequence[Sequence[Neuron]], kept: Sequence[int], share: float | str = "adaptive",
                     ) -> list[NeuronKey]:
    """The refined set of the ``kept`` prompts, from their coarse sets, as :func:`refine` would find it."""
    keys, _ = refined_keys([coarse[i] for i in kept], share)
    return sorted(keys)


def coverage_notes(facts: Sequence[Fact], data: RobustnessData, coarse_by_fact: Mapping | None = None) -> list[str]:
    """One line per test that cannot run on ``facts`` (the rest still runs)."""
    notes = []
    if not data.one_to_one_facts(facts):
        notes.append(f"no fact of a one-to-one relation ({', '.join(sorted(data.one_to_one))}): the symmetry test "
                     "is skipped.")
    if not any(data.aliases_of(f) for f in facts):
        notes.append("no fact whose subject has aliases: the synonym test is skipped.")
    if coarse_by_fact is None or not any(coarse_by_fact.get(f.id) for f in facts):
        notes.append("no prompts' coarse neurons given: the held-out paraphrase test is skipped.")
    return notes


def _symmetry_pool(fact: Fact, pool: Sequence[Fact], data: RobustnessData) -> Sequence[Fact]:
    return [f for f in pool if f.relation == fact.relation and data.is_one_to_one(f)] \
        if data.is_one_to_one(fact) else pool


def edit_robustness_study(
    lm: LanguageModel,
    facts: Sequence[Fact],
    neurons_by_fact: Mapping[str, Iterable[Neuron | NeuronKey]],
    *,
    coarse_by_fact: Mapping[str, Sequence[Sequence[Neuron]]] | None = None,
    share: float | str = "adaptive",
    pool: Sequence[Fact] | None = None,
    owners_from: Sequence[Fact] | None = None,
    data: RobustnessData | None = None,
    settings: Sequence[tuple[Scale, SignRule]] = (("absolute", "none"), ("absolute", "activation")),
    lambda_old: float = 1.0,
    lambda_new: float = 8.0,
    max_share: float = 0.1,
    held_out: int = 2,
    n_neighbours: int = 10,
    seed: int = 0,
    on_fact: Callable[[int, Fact], None] | None = None,
) -> list[dict]:
    """Update each fact of ``facts`` that has knowledge neurons and measure the update under Niu et al.'s tests.

    Args:
        neurons_by_fact: refined knowledge neurons by fact id (also the relation counts behind ``max_share``).
        coarse_by_fact: each fact's coarse neurons per prompt (``atlas.knowledge_neurons(id).coarse``) for the
            held-out test, refined again with ``share`` (the atlas's ``params["share"]``); None skips that test.
        pool: where new answers and neighbours come from (default ``facts``), e.g. the built-in facts the model
            knows plus the atlas's.
        owners_from: facts that say whose the new answer is for the reverse query (default ``pool``; e.g. all
            built-in facts: Rome is Italy's capital whether or not the model knows it).
        data: aliases and one-to-one relations (default the shipped :func:`robustness_data`).
        settings: (scale, sign) pairs of :func:`update_fact`, one variant each (:func:`variant_name`).
        held_out: templates of a fact left out when its neurons are refined again.
        n_neighbours: other facts of the relation for the neighbourhood score.

    Returns:
        Long-format rows of study ``edit_robustness``; a fact that could not be edited gets ``edited`` = 0.
    """
    data = data or robustness_data()
    pool = list(pool if pool is not None else facts)
    owners = data.owners(owners_from if owners_from is not None else pool)
    counts = relation_counts(pool, neurons_by_fact)
    for scale, sign in settings:
        if scale not in ("absolute", "slot_norm") or sign not in ("none", "activation"):
            raise KneuronError(f"Unknown update setting {scale}:{sign}; scale is absolute or slot_norm, sign is none "
                               "or activation.")
    options = dict(lambda_old=lambda_old, lambda_new=lambda_new, max_share=max_share)
    methods = [(variant_name(scale, sign), kn_maker(counts, scale, sign, options, lm)) for scale, sign in settings]
    rows: list[dict] = []
    for fact, keys in edited_facts(facts, neurons_by_fact, on_fact):
        rows += fact_rows(lm, fact, keys, data=data, pool=pool, owners=owners,
                          coarse=(coarse_by_fact or {}).get(fact.id), share=share, methods=methods,
                          held_out=held_out, n_neighbours=n_neighbours, seed=seed)
    return rows


def fact_rows(lm: LanguageModel, fact: Fact, keys: list[NeuronKey], *, data: RobustnessData, pool: Sequence[Fact],
              owners: Mapping[tuple[str, str], str], coarse: Sequence[Sequence[Neuron]] | None, share: float | str,
              methods: Sequence[tuple[str, EditMaker]], held_out: int, n_neighbours: int, seed: int,
              study: str = STUDY) -> list[dict]:
    """Every variant's rows for one fact: each of ``methods`` (variant name, :data:`EditMaker`) makes its edit of
    the fact (and, for the held-out test, from the kept prompts' neurons and prompts), measured on the same prompt
    sets (a study comparing edit methods reuses this with its own ``study`` name)."""
    def out(variant: str, values: Mapping[str, float]) -> list[dict]:
        return [row(study, variant, fact.relation, fact.id, k, v) for k, v in values.items()]

    new = robustness_new_answer(lm, fact, pool, data, seed)
    prompts = fact.prompts()
    batch = _Batch()  # the prompt sets of the ordinary edit
    common: dict[str, float] = {}
    if new is not None:
        batch.add("own_old", _queries(lm, prompts, fact.object))
        batch.add("own_new", _queries(lm, prompts, new))
        aliases = [p for alias in data.alias_facts(fact) for p in alias.prompts()]
        common["aliases"] = float(len(data.aliases_of(fact)))
        if aliases:
            batch.add("alias_old", _queries(lm, aliases, fact.object))
            batch.add("alias_new", _queries(lm, aliases, new))
        owner = owners.get((fact.relation, new)) if data.is_one_to_one(fact) else None
        if owner is not None:  # the edited fact and the new answer's own fact are both one-to-one
            reverse_new, reverse_old = data.reverse_fact(fact, new).prompts(), data.reverse_fact(fact).prompts()
            batch.add("reverse_new", _queries(lm, reverse_new, fact.subject))
            batch.add("reverse_old", _queries(lm, reverse_old, fact.subject))
            if owner != fact.subject:
                batch.add("reverse_owner", _queries(lm, reverse_new, owner))
        candidates = [f for f in pool if f.relation == fact.relation and f.id != fact.id and f.object != new]
        rng = fact_rng(seed + 3, fact.id)
        neighbours = sample_facts(candidates, n_neighbours, rng)
        common["neighbours"] = float(len(neighbours))
        if neighbours:  # one prompt per neighbour, as CounterFact's neighbourhood prompts
            chosen = [(f, f.prompts()[int(rng.integers(len(f.templates)))]) for f in neighbours]
            batch.add("neighbour_true", [encode(lm, p, f.object) for f, p in chosen])
            batch.add("neighbour_new", [encode(lm, p, new) for _, p in chosen])
    # held-out paraphrases: the refined set of the kept prompts, from the stored coarse sets
    kept, heldout = held_out_split(fact, held_out, seed)
    held_keys: list[NeuronKey] = []
    if coarse is not None and len(coarse) == len(prompts):
        common["refined_equal"] = float(set(held_out_neurons(coarse, range(len(prompts)), share)) == set(keys))
        if heldout:
            held_keys = held_out_neurons(coarse, kept, share)
            common["heldout_neurons"] = float(len(held_keys))
            union = set(held_keys) | set(keys)
            common["heldout_jaccard"] = len(set(held_keys) & set(keys)) / len(union) if union else math.nan
    held_batch = _Batch()
    if new is not None and heldout and coarse is not None and len(coarse) == len(prompts):
        for name, chosen in (("heldout", heldout), ("kept", kept)):
            held_batch.add(f"{name}_old", _queries(lm, [prompts[i] for i in chosen], fact.object))
            held_batch.add(f"{name}_new", _queries(lm, [prompts[i] for i in chosen], new))
    before = batch.scored(lm) | held_batch.scored(lm)
    rows: list[dict] = []
    for variant, make in methods:
        edit = None
        if new is not None:
            try:
                edit = make(fact, new, keys, None)
            except UNEDITABLE:  # e.g. every neuron shared by the relation
                edit = None
        if edit is None:
            rows += out(variant, {"edited": 0.0})
            continue
        after = batch.scored(lm, edit)
        values = {"edited": 1.0, "neurons": float(len(edit)), **common}
        values |= pair_metrics("own", before["own_old"], before["own_new"], after["own_old"], after["own_new"])
        if "alias_old" in before:
            values |= pair_metrics("alias", before["alias_old"], before["alias_new"], after["alias_old"],
                                   after["alias_new"])
        if "reverse_new" in before:
            values |= _reverse_metrics(before, after)
        if "neighbour_true" in before:
            values |= _neighbourhood(before, after)
        if held_batch.sets:
            values |= _held_out_metrics(lm, fact, new, held_keys, kept, heldout, held_batch, before, edit, make)
        rows += out(variant, values)
    return rows


def robustness_new_answer(lm: LanguageModel, fact: Fact, pool: Sequence[Fact], data: RobustnessData, seed: int,
                          ) -> str | None:
    """t' of ``fact``: among the relation's one-to-one answers the model knows when the fact is one-to-one (so that
    the reverse query has one answer), otherwise (or when there is none) the editing study's choice."""
    new = choose_new_answer(lm, fact, _symmetry_pool(fact, pool, data), seed)
    if new is None and data.is_one_to_one(fact):  # no one-to-one answer to move to: the symmetry test is skipped
        new = choose_new_answer(lm, fact, pool, seed)
    return new


def _reverse_metrics(before: Mapping[str, Scores], after: Mapping[str, Scores]) -> dict[str, float]:
    b_new, a_new = before["reverse_new"], after["reverse_new"]
    b_old, a_old = before["reverse_old"], after["reverse_old"]
    values = {
        "reverse_new_p_before": mean_of(b_new.probability), "reverse_new_p_after": mean_of(a_new.probability),
        "reverse_new_p_rose": share_of(a_new.first_probability > b_new.first_probability),
        "reverse_new_p_joint_rose": share_of(a_new.probability > b_new.probability),
        "reverse_new_top1_before": share_of(b_new.hit), "reverse_new_top1_after": share_of(a_new.hit),
        "reverse_new_top1_became": share_of(a_new.hit & ~b_new.hit),
        "reverse_old_p_before": mean_of(b_old.probability), "reverse_old_p_after": mean_of(a_old.probability),
        "reverse_old_top1_before": share_of(b_old.hit), "reverse_old_top1_after": share_of(a_old.hit),
        "reverse_old_kept": share_of(a_old.hit[b_old.hit]) if b_old.hit.any() else math.nan,
        "reverse_prompts": float(len(b_new)),
    }
    if "reverse_owner" in before:
        values["reverse_new_beats_owner_before"] = share_of(b_new.probability > before["reverse_owner"].probability)
        values["reverse_new_beats_owner"] = share_of(a_new.probability > after["reverse_owner"].probability)
    return values


def _neighbourhood(before: Mapping[str, Scores], after: Mapping[str, Scores]) -> dict[str, float]:
    margin_before = before["neighbour_true"].mean_logprob - before["neighbour_new"].mean_logprob
    margin_after = after["neighbour_true"].mean_logprob - after["neighbour_new"].mean_logprob
    return {"neighborhood_before": share_of(margin_before > 0), "neighborhood": share_of(margin_after > 0),
            "neighborhood_diff_before": mean_of(margin_before), "neighborhood_diff": mean_of(margin_after),
            "neighborhood_prompts": float(len(margin_before))}


def _held_out_metrics(lm: LanguageModel, fact: Fact, new: str, held_keys: list[NeuronKey], kept: list[int],
                      heldout: list[int], held_batch: _Batch, before: Mapping[str, Scores], full_edit: Edit,
                      make: EditMaker) -> dict[str, float]:
    """The full edit on the held-out prompts, and the edit made from the kept prompts (and their neurons) on
    held-out and kept ones."""
    full = held_batch.scored(lm, full_edit)
    values = pair_metrics("heldout_full", before["heldout_old"], before["heldout_new"], full["heldout_old"],
                          full["heldout_new"])
    prompts = fact.prompts()
    try:
        edit = make(fact, new, held_keys, [prompts[i] for i in kept])
    except UNEDITABLE:
        return values | {"heldout_edited": 0.0}
    after = held_batch.scored(lm, edit)
    values["heldout_edited"] = 1.0
    for name in ("heldout", "kept"):
        values |= pair_metrics(name, before[f"{name}_old"], before[f"{name}_new"], after[f"{name}_old"],
                               after[f"{name}_new"])
    return values


# ---------------------------------------------------------------------------------------------------------- runner

def atlas_inputs(atlas) -> dict:
    """What the study needs from an atlas (in one snapshot): its done facts, refined neurons, per-prompt coarse
    sets and refinement share."""
    with atlas.snapshot():
        facts = atlas.facts()
        return {"facts": facts, "neurons_by_fact": atlas.all_refined(),
                "coarse_by_fact": {f.id: atlas.knowledge_neurons(f.id).coarse for f in facts},
                "share": atlas.params.get("share", "adaptive")}


def study_pool(lm: LanguageModel, facts: Sequence[Fact], known_only: bool = False) -> tuple[list[Fact], list[Fact]]:
    """(pool, owners) for ``facts``: the built-in facts of their relations plus ``facts`` themselves (new answers and
    neighbours come from it), and all built-in facts plus ``facts`` (whose the new answer is).

    ``known_only`` keeps only the built-in facts the model knows, as the editing study's pool (then t' is the
    editing study's for the relations whose facts are all one-to-one or none); it costs a pass over every
    built-in prompt of those relations (about 100 s for all relations on SmolLM2-135M, one CPU thread), so by
    default the pool is every built-in fact of the relations, and the neighbourhood's ``_before`` score shows how
    many of them the model gets right unedited. Either way the pool skips the built-in facts the model cannot
    encode (:func:`kneuron.facts.known.encodable_facts`: a masked model whose vocabulary lacks an answer).
    """
    from kneuron.facts import builtin_facts, known_facts
    from kneuron.facts.known import encodable_facts

    builtin = builtin_facts()
    relations = {f.relation for f in facts}
    candidates = [f for f in builtin if f.relation in relations]
    candidates = known_facts(lm, candidates)[0] if known_only else encodable_facts(lm, candidates)[0]
    pool = list({**{f.id: f for f in candidates}, **{f.id: f for f in facts}}.values())
    owners = list({**{f.id: f for f in builtin}, **{f.id: f for f in facts}}.values())
    return pool, owners
