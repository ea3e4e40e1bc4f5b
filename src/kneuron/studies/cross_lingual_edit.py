"""The cross-lingual edit: update a fact through the knowledge neurons found on its English prompts, then ask in
every language whether the update took.

For a key (e.g. ``capital:France``) with an English version that has knowledge neurons, the target is another
key of the same relation (seeded by ``seed`` and the key, among those with versions in the most of the key's
languages; its English answer must begin with another token than the fact's), e.g. ``capital:Italy``. The edit is
the paper's update (:func:`~kneuron.interventions.update_fact`, λ = 1, 8) of the English neurons from the English
answer to the target's English answer ("Paris" → "Rome"). Each language t of the key is then measured on its own
prompts with its own forms: the key's answer in t against the target key's answer in t (``capital:France@de``
"Paris" against ``capital:Italy@de`` "Rom"), with the editing study's metrics
(:func:`~kneuron.studies.editing.update_metrics`: P(new) > P(old), top-1 = new, change rate, probabilities
before/after...). Every edit is applied in a ``with edit.applied(lm)`` block, so the model is restored bit-exactly
after each.

As in the editing study, neurons that are knowledge neurons of more than ``max_share`` of the relation's facts are
left out; here a fact is a key (its language versions count once), so the neurons one fact shares across its
languages are not taken for neurons shared by many facts.

Variants (``variant``): ``edit_kn`` (the English knowledge neurons) and ``edit_random`` (as many random neurons, one
in the layer of each kept neuron, seeded, the same delta), with ``_signed`` appended for ``sign="activation"``
(each delta times the sign of the neuron's mean activation on the English prompts; needed for gated FFNs).

Rows (``study="languages"``, fact id ``key@t``): ``edited`` (1, or 0 when no edit could be made: no English
neurons, no target, every neuron left out; then on the English fact only), ``measured`` (0 when the target key has
no version in t, has the fact's own answer there, or one the model cannot spell, with an unknown token),
``neurons`` and the metrics of ``update_metrics``; ``target_same_first`` is 1 when t's old and new answers begin
with the same token, where the top-1 metrics cannot tell them apart.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from kneuron.attribution.types import Neuron
from kneuron.errors import EditError, KneuronError
from kneuron.facts.fact import Fact
from kneuron.facts.languages import language_of
from kneuron.interventions.edits import Edit
from kneuron.interventions.update import SignRule, answer_ids, first_answer_id, update_fact
from kneuron.models.language_model import LanguageModel
from kneuron.studies.edit_scoring import update_metrics
from kneuron.studies.languages import STUDY, language_order, language_versions
from kneuron.studies.metrics import NeuronKey, fact_rng, row
from kneuron.studies.suppress_amplify import keys_of, random_control

EDIT_SIGNS: tuple[SignRule, ...] = ("none", "activation")


def edit_variant(base: str, sign: SignRule) -> str:
    """``edit_kn`` / ``edit_random``, with ``_signed`` for ``sign="activation"``."""
    return f"edit_{base}" + ("_signed" if sign == "activation" else "")


def key_counts(versions_by_key: Mapping[str, Mapping[str, Fact]],
               neurons_by_fact: Mapping[str, Iterable[Neuron | NeuronKey]], relation: str,
               ) -> tuple[dict[NeuronKey, int], int]:
    """(how many keys of ``relation`` have each neuron in any language, how many keys have neurons at all)."""
    counts: dict[NeuronKey, int] = defaultdict(int)
    keys = 0
    for versions in versions_by_key.values():
        if next(iter(versions.values())).relation != relation:
            continue
        union = {k for fact in versions.values() for k in keys_of(neurons_by_fact.get(fact.id, ()))}
        keys += bool(union)
        for k in union:
            counts[k] += 1
    return dict(counts), keys


def choose_target(lm: LanguageModel, key: str, fact: Fact, pool: Mapping[str, Mapping[str, Fact]], source: str,
                  seed: int = 0, languages: Sequence[str] = ()) -> str | None:
    """Another key of ``fact``'s relation with a ``source`` version whose answer begins with another token than
    ``fact``'s (and that the model can produce), drawn with :func:`fact_rng` (``seed``, ``key``) among those with
    versions in the most of ``languages`` (the key's own: so that the edit can be measured there); None when none.
    """
    prompt = fact.prompts()[0] if fact.templates else None
    first = first_answer_id(lm, fact.object, prompt)
    if first is None:
        return None
    candidates = []
    for other, versions in pool.items():
        theirs = versions.get(source)
        if other == key or theirs is None or theirs.relation != fact.relation or theirs.object == fact.object:
            continue
        if first_answer_id(lm, theirs.object, prompt) not in (None, first):
            candidates.append(other)
    if not candidates:
        return None
    covered = {other: sum(code in pool[other] for code in languages) for other in candidates}
    candidates = [other for other in candidates if covered[other] == max(covered.values())]
    return candidates[int(fact_rng(seed, key).integers(len(candidates)))]


def _producible(lm: LanguageModel, fact: Fact, answer: str) -> bool:
    """Whether the model can produce ``answer`` after ``fact``'s first prompt (no unknown token, ids in range)."""
    try:
        answer_ids(lm, answer, fact.prompts()[0] if fact.templates else None)
    except KneuronError:
        return False
    return True


def _same_first(lm: LanguageModel, fact: Fact, old: str, new: str) -> bool:
    prompt = fact.prompts()[0] if fact.templates else None
    try:
        return answer_ids(lm, old, prompt)[0] == answer_ids(lm, new, prompt)[0]
    except KneuronError:
        return False


def cross_lingual_edit(
    lm: LanguageModel,
    keys: Mapping[str, Mapping[str, Fact]],
    neurons_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]],
    *,
    pool: Sequence[Fact] = (),
    counted: Sequence[Fact] = (),
    source: str = "en",
    signs: Sequence[SignRule] = EDIT_SIGNS,
    random: bool = True,
    lambda_old: float = 1.0,
    lambda_new: float = 8.0,
    max_share: float = 0.1,
    seed: int = 0,
    on_key: Callable[[str], None] | None = None,
) -> list[dict]:
    """Edit each key of ``keys`` (``{key: {language: done fact}}``) through its ``source``-language neurons and
    measure every language (see the module docstring).

    Args:
        pool: facts the targets and their forms in each language come from (e.g. every fact of the atlas, also the
            ones the model does not know); ``keys``' own facts are always in it.
        counted: the done facts whose neurons count for the shared-neuron rule (default the facts of ``keys``).
        signs: the update's sign rules to run ("none": the paper's formula; "activation").
        random: also run the random-neuron control.
    """
    own = [fact for versions in keys.values() for fact in versions.values()]
    targets = language_versions([*pool, *own])
    counting = language_versions(counted or own)
    rows: list[dict] = []
    for key, versions in keys.items():
        english = versions.get(source)
        if english is None:
            if on_key:
                on_key(key)
            continue
        kept = keys_of(neurons_by_fact.get(english.id, ()))
        target_key = choose_target(lm, key, english, targets, source, seed, list(versions)) if kept else None
        for sign in signs:
            edits: dict[str, Edit] = {}
            if target_key is not None:
                rel_counts, n_keys = key_counts(counting, neurons_by_fact, english.relation)
                new = targets[target_key][source].object
                try:
                    edits["kn"] = update_fact(lm, kept, english.object, new, lambda_old=lambda_old,
                                              lambda_new=lambda_new, relation_counts=rel_counts,
                                              n_facts=max(n_keys, 1), max_share=max_share, sign=sign, fact=english)
                except EditError:  # e.g. every neuron shared by the relation's facts: recorded as not edited
                    edits = {}
                if edits and random:
                    chosen = random_control(edits["kn"].neurons, lm.n_neurons, fact_rng(seed + 1, key))
                    edits["random"] = update_fact(lm, chosen, english.object, new, lambda_old=lambda_old,
                                                  lambda_new=lambda_new, sign=sign, fact=english)
            if not edits:
                for base in ("kn", "random") if random else ("kn",):
                    rows.append(row(STUDY, edit_variant(base, sign), english.relation, english.id, "edited", 0.0))
                continue
            for base, edit in edits.items():
                rows += _measure(lm, edit, edit_variant(base, sign), versions, targets[target_key])
        if on_key:
            on_key(key)
    return rows


def _measure(lm: LanguageModel, edit: Edit, variant: str, versions: Mapping[str, Fact],
             target_versions: Mapping[str, Fact]) -> list[dict]:
    """The edit's rows in every language of the key."""
    rows = []
    for code, fact in versions.items():
        target = target_versions.get(code)
        base = {"edited": 1.0, "neurons": float(len(edit))}
        if target is None or target.object == fact.object or not _producible(lm, fact, target.object):
            rows += [row(STUDY, variant, fact.relation, fact.id, metric, value)
                     for metric, value in {**base, "measured": 0.0}.items()]
            continue
        values = {**base, "measured": 1.0,
                  "target_same_first": float(_same_first(lm, fact, fact.object, target.object)),
                  **update_metrics(lm, edit, fact, target.object, old=fact.object)}
        rows += [row(STUDY, variant, fact.relation, fact.id, metric, value) for metric, value in values.items()]
    return rows


def edit_summary(rows: Iterable[dict], variant: str) -> dict[str, dict[str, float]]:
    """Per language: ``keys`` measured, ``edited`` (keys whose edit was made, counted on the English fact rows) and
    the mean over measured keys of each :func:`update_metrics` metric."""
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["variant"] != variant or not (code := language_of(r["fact_id"])):
            continue
        per[code][r["metric"]].append(r["value"])
    out: dict[str, dict[str, float]] = {}
    for code in language_order(per):
        metrics = per[code]
        measured = metrics.get("measured", [])
        entry = {"keys": float(sum(measured)), "attempted": float(len(metrics.get("edited", []))),
                 "edited": float(sum(metrics.get("edited", [])))}
        for metric, values in metrics.items():
            if metric in ("measured", "edited"):
                continue
            finite = [v for v in values if math.isfinite(v)]
            entry[metric] = float(np.mean(finite)) if finite else math.nan
        out[code] = entry
    return out
