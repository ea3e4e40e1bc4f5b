"""KN editing against ROME on the same facts, with the same metrics (issue 25, item 4).

For each fact with knowledge neurons, one new answer t' (the edit-robustness study's choice,
:func:`~kneuron.studies.edit_robustness.robustness_new_answer`: another answer of the relation, one-to-one where the
relation is) and three edits of the same model:

* ``kn``: the paper's update of the fact's knowledge neurons (:func:`~kneuron.interventions.update_fact`, λ 1 and
  8, neurons of more than 10% of the relation's facts left out);
* ``kn_signed``: the same with each delta times the sign of the neuron's activation (gated FFNs need it);
* ``rome``: ROME's rank-one update at one MLP layer (:mod:`kneuron.interventions.rome`), C from ``stats_samples``
  tokens of text sampled from the model; ``rome_c{n}`` (``compare_samples``) is the same key and δ with C from
  ``n`` tokens only (δ does not depend on C), so it measures how much the edit depends on the statistics.

Every metric is the edit-robustness study's (:func:`~kneuron.studies.edit_robustness.fact_rows`, rows prefixed as
there: ``own_*`` for the fact's own prompts (update success: ``own_top1_new``, ``own_new_beats_old``), ``alias_*``,
``reverse_*``, ``heldout_*`` (ROME learns from one prompt, its rewrite prompt, chosen among the kept ones for the
held-out test, so the held-out prompts are paraphrases it never saw), ``neighborhood*``) plus the editing
study's collateral on ``n_other`` other facts of the same relation (``intra_*``) and of other relations
(``inter_*``), whose ΔPPL is the paper's (:func:`~kneuron.studies.editing.update_summary`).

**Hase et al.'s check** (NeurIPS 2023, "Does Localization Inform Editing?"): per fact, causal tracing of its first
readable prompt (:mod:`kneuron.interventions.tracing`, noise 3 × the subjects' embedding std, ``samples`` draws):
the MLP output restored at the subject's last token in ROME's window of 10 layers centred on each layer (variant
``tracing``: ``mlp_window L{l}``, ``peak_layer``, ``at_edit_layer``) and at the edit layer alone
(``at_edit_layer_alone``). :func:`localisation_correlations` gives the Spearman correlation over facts between that
effect and ROME's success (the rise of P(t') on the fact's own prompts, and whether it beats the old answer).

Rows are long format in the study ``edit_methods``; every edit is applied in a context and undone bit-exactly.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from kneuron.attribution.types import Neuron
from kneuron.facts.fact import Fact, Prompt
from kneuron.facts.robustness import RobustnessData, robustness_data
from kneuron.interventions.edits import Edit
from kneuron.interventions.rome import RomeParts, RomeSettings, redirected, rewrite_prompt, rome_edit, rome_parts
from kneuron.interventions.rome_stats import KeyStats
from kneuron.interventions.tracing import Restoration, embedding_std, indirect_effects, prepare, window_layers
from kneuron.interventions.update import NeuronKey
from kneuron.models.language_model import LanguageModel
from kneuron.studies.edit_robustness import (
    UNEDITABLE,
    EditMaker,
    fact_rows,
    kn_maker,
    robustness_new_answer,
)
from kneuron.studies.edit_scoring import CleanScores, collateral_values
from kneuron.studies.editing import collateral_facts, edited_facts, relation_counts
from kneuron.studies.metrics import row
from kneuron.studies.tracing import traced_prompt

STUDY = "edit_methods"
#: the methods compared, in table order (``rome_c{n}`` variants follow ``rome``)
METHODS = ("kn", "kn_signed", "rome")


class RomeMethod:
    """ROME's edits of one fact at a time, with its parts (key, δ) computed once per (fact, t', rewrite prompt) and
    shared by the variants whose C differs."""

    def __init__(self, lm: LanguageModel, layer: int, stats: KeyStats, settings: RomeSettings) -> None:
        self.lm, self.layer, self.stats, self.settings = lm, layer, stats, settings
        self._parts: dict[tuple[str, str, str], RomeParts] = {}
        self.seconds = 0.0

    def parts(self, fact: Fact, new: str, prompts: Sequence[Prompt] | None) -> RomeParts:
        prompt = rewrite_prompt(fact if prompts is None else list(prompts))
        key = (fact.id, new, prompt.template)
        if key not in self._parts:
            if self._parts and next(iter(self._parts))[0] != fact.id:
                self._parts.clear()  # one fact at a time
            start = time.perf_counter()
            self._parts[key] = rome_parts(self.lm, fact, new, layer=self.layer, stats=self.stats, prompt=prompt,
                                          settings=self.settings)
            self.seconds += time.perf_counter() - start
        return self._parts[key]

    def maker(self, stats: KeyStats | None = None) -> EditMaker:
        """The ROME edit with this method's C, or with ``stats``'s (same key and δ)."""
        def make(fact: Fact, new: str, _keys: Sequence[NeuronKey], prompts: Sequence[Prompt] | None) -> Edit:
            parts = self.parts(fact, new, prompts)
            if stats is not None:
                parts = redirected(parts, stats, self.settings.ridge)
            return rome_edit(self.lm, fact, new, parts, self.settings)
        return make


def hase_rows(lm: LanguageModel, fact: Fact, layer: int, *, noise: float, samples: int, window: int, seed: int,
              ) -> list[dict]:
    """The tracing rows of Hase et al.'s check for one fact (see the module docstring); none when no prompt of
    the fact has a subject the model reads before the answer."""
    found = traced_prompt(lm, fact)
    if found is None:
        return []
    _, _, query, subject = found
    plan = prepare(lm, query, subject, noise=noise, samples=samples, seed=zlib.crc32(f"{seed}:{fact.id}".encode()))
    last_subject, n = subject[-1], lm.n_layers
    restorations = [Restoration("mlp", last_subject, window_layers(lr, n, window)) for lr in range(n)]
    restorations.append(Restoration("mlp", last_subject, (layer,)))
    effects = indirect_effects(lm, plan, restorations)
    values = {f"mlp_window L{lr}": float(effects[lr]) for lr in range(n)}
    values |= {"peak_layer": float(np.argmax(effects[:n])), "at_edit_layer": float(effects[layer]),
               "at_edit_layer_alone": float(effects[n]), "total_effect": plan.p_clean - plan.p_corrupted,
               "p_clean": plan.p_clean, "edit_layer": float(layer)}
    return [row(STUDY, "tracing", fact.relation, fact.id, k, v) for k, v in values.items()]


def edit_methods_study(
    lm: LanguageModel,
    facts: Sequence[Fact],
    neurons_by_fact: Mapping[str, Sequence[Neuron | NeuronKey]],
    *,
    layer: int,
    stats: KeyStats,
    compare_stats: Sequence[KeyStats] = (),
    coarse_by_fact: Mapping[str, Sequence[Sequence[Neuron]]] | None = None,
    share: float | str = "adaptive",
    pool: Sequence[Fact] | None = None,
    owners_from: Sequence[Fact] | None = None,
    data: RobustnessData | None = None,
    settings: RomeSettings | None = None,
    held_out: int = 2,
    n_neighbours: int = 10,
    n_other: int = 5,
    trace_samples: int = 10,
    seed: int = 0,
    on_fact: Callable[[int, Fact], None] | None = None,
) -> list[dict]:
    """Each fact of ``facts`` with knowledge neurons edited by every method and measured (see the module docstring).

    Args:
        layer, stats: ROME's layer and its keys' second moment there; ``compare_stats`` other estimates of C (the
            ``rome_c{samples}`` variants).
        pool, owners_from, data, held_out, n_neighbours: as :func:`~kneuron.studies.edit_robustness.
            edit_robustness_study`; ``n_other``: the collateral facts per relation group, as the editing study
            (those of other relations drawn from ``owners_from``, every built-in relation by default in the study).
        trace_samples: noise draws of Hase et al.'s tracing (0: no tracing).
    """
    data = data or robustness_data()
    settings = settings or RomeSettings(seed=seed)
    pool = list(pool if pool is not None else facts)
    owners = data.owners(owners_from if owners_from is not None else pool)
    # the other relations' facts: every relation of owners_from (the pool holds only the edited facts' relations)
    others = list(owners_from if owners_from is not None else pool)
    counts = relation_counts(pool, neurons_by_fact)
    options = dict(lambda_old=1.0, lambda_new=8.0, max_share=0.1)
    rome = RomeMethod(lm, layer, stats, settings)
    methods: list[tuple[str, EditMaker]] = [("kn", kn_maker(counts, "absolute", "none", options, lm)),
                                            ("kn_signed", kn_maker(counts, "absolute", "activation", options, lm)),
                                            ("rome", rome.maker())]
    methods += [(f"rome_c{s.samples}", rome.maker(s)) for s in compare_stats]
    clean = CleanScores(lm)
    noise = 3.0 * embedding_std(lm, [f.subject for f in facts]) if trace_samples else 0.0
    rows: list[dict] = []
    for fact, keys in edited_facts(facts, neurons_by_fact, on_fact):
        start, rome.seconds = time.perf_counter(), 0.0
        rows += fact_rows(lm, fact, keys, data=data, pool=pool, owners=owners, coarse=(coarse_by_fact or {}).get(
            fact.id), share=share, methods=methods, held_out=held_out, n_neighbours=n_neighbours, seed=seed,
            study=STUDY)
        new = robustness_new_answer(lm, fact, pool, data, seed)
        intra, inter = collateral_facts(fact, pool, n_other, seed, others)
        for variant, make in methods:
            rows += _collateral_rows(lm, fact, new, keys, variant, make, clean, intra, inter)
        if new is not None and compare_stats:
            rows += _stats_rows(rome, fact, new, compare_stats)
        if trace_samples:
            rows += hase_rows(lm, fact, layer, noise=noise, samples=trace_samples, window=10, seed=seed)
        rows.append(row(STUDY, "rome", fact.relation, fact.id, "rome_seconds", rome.seconds))
        rows.append(row(STUDY, "cost", fact.relation, fact.id, "seconds", time.perf_counter() - start))
    rows += [row(STUDY, "params", "", "", metric, value) for metric, value in (
        ("layer", layer), ("stats_samples", stats.samples), ("threads", torch.get_num_threads()),
        *((f"compare_samples {s.samples}", s.samples) for s in compare_stats))]
    return rows


def _stats_rows(rome: RomeMethod, fact: Fact, new: str, compare_stats: Sequence[KeyStats]) -> list[dict]:
    """How far each other C moves ROME's update from the main one: ΔW = u δᵀ with the same δ, so
    ‖ΔW − ΔW_main‖ / ‖ΔW_main‖ = ‖u − u_main‖ / ‖u_main‖ (``change_vs_main``), and the cosine of u and u_main."""
    try:
        parts = rome.parts(fact, new, None)
    except UNEDITABLE:
        return []
    out = []
    for s in compare_stats:
        other = redirected(parts, s, rome.settings.ridge).direction
        main = parts.direction
        for metric, value in (("change_vs_main", float((other - main).norm() / main.norm())),
                              ("cosine_vs_main", float(other @ main / (other.norm() * main.norm())))):
            out.append(row(STUDY, f"rome_c{s.samples}", fact.relation, fact.id, metric, value))
    return out


def _collateral_rows(lm: LanguageModel, fact: Fact, new: str | None, keys: Sequence[NeuronKey], variant: str,
                     make: EditMaker, clean: CleanScores, intra: Sequence[Fact], inter: Sequence[Fact],
                     ) -> list[dict]:
    """The editing study's collateral of one method's edit on other facts (``intra_*``, ``inter_*``)."""
    if new is None:
        return []
    try:
        edit = make(fact, new, keys, None)
    except UNEDITABLE:
        return []
    values = collateral_values(lm, edit, clean, (("intra", intra), ("inter", inter)))
    return [row(STUDY, variant, fact.relation, fact.id, k, v) for k, v in values.items()]

