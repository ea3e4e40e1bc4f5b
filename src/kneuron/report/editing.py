"""The report's editing section: update success and collateral damage, and the erased relation, from the
``editing`` study's rows (:mod:`kneuron.studies.editing`), next to the paper's BERT figures.

Include it in a report with ``editing_section(data.rows("editing"), data.aggregates.get("editing", ()))`` (an
HTML fragment: headings, tables and notes, no scripts; classes ``note`` and ``warn`` and left-aligned ``td.l`` as
in the report's CSS).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from kneuron.report.parts import escape as _e
from kneuron.report.parts import table as _table
from kneuron.studies.editing import erase_summary, update_summary
from kneuron.studies.editing_summary import (
    CONTROLS,
    ERASE_FIGURES,
    UPDATE_FIGURES,
    erase_variants,
    show,
    update_variants,
)

#: the paper's update figures (Dai et al. 2022, "Case 1: updating facts"; BERT-base-cased, PARAREL, one random prompt
#: per sampled fact): knowledge neurons and the random-neuron control
PAPER_UPDATE = {
    "kn": {"top1_new": 0.344, "changed": 0.485, "intra_delta_ppl": 8.4, "inter_delta_ppl": 7.2},
    "random": {"top1_new": 0.0, "changed": 0.047, "intra_delta_ppl": 10.1, "inter_delta_ppl": 4.3},
}
#: the paper's erasing outcome, in words (its four erased relations)
PAPER_ERASE = ("the paper erases P19, P27, P106 and P937 (top knowledge neurons set to [UNK]'s embedding): the erased "
               "relation's perplexity rises by roughly +37% to +141%, other relations' by +1% to +10%")

LABELS = {
    "kn": "knowledge neurons, the paper's formula",
    "random": "random neurons (same layers), the paper's formula",
    "kn_signed": "knowledge neurons, sign of the activation",
    "random_signed": "random neurons, sign of the activation",
    "kn_slot_norm": "knowledge neurons, the official code's norm-scaled lambdas",
    "random_slot_norm": "random neurons, norm-scaled lambdas",
    "kn_slot_norm_signed": "knowledge neurons, norm-scaled, signed",
    "random_slot_norm_signed": "random neurons, norm-scaled, signed",
}


def _pct(value: float) -> str:
    return f"{value:.1%}" if math.isfinite(value) else "–"


def _num(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "–"


def _label(variant: str) -> str:
    control = CONTROLS.get(variant)
    return f"{LABELS.get(variant, variant)} ({variant}{f'; p vs {control}' if control else ''})"


def editing_section(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> str:
    """The editing section as an HTML fragment (a "not run" note when there are no rows). ``aggregates``: the
    study's stored ones (``Atlas.aggregates("editing")``), whose intervals, n and paired p against the study's
    control each mean shows; without them (an atlas studied by an older kneuron) the bare means with their n."""
    rows = list(rows)
    if not rows:
        return ("<h2>Editing knowledge</h2><p>Not run: <code>kneuron study editing --run ATLAS "
                "--erase RELATION</code></p>")
    parts = ["<h2>Editing knowledge</h2>"]
    updates = update_variants(rows)
    if updates:
        summaries = {variant: update_summary(rows, variant) for variant in updates}
        table = [["facts edited", *(f"{s['edited']:.0f}/{s['facts']:.0f}" for s in summaries.values()), "", ""]]
        for item in UPDATE_FIGURES:
            paper = [PAPER_UPDATE[v].get(item.metric, math.nan) for v in ("kn", "random")]
            table.append([_e(item.label), *(_e(show(aggregates, rows, v, item, name_control=False)) for v in updates),
                          *(_pct(p) if math.isfinite(p) else "" for p in paper)])
        for tag, label in (("intra", "ΔPPL same relation"), ("inter", "ΔPPL other relations")):
            paper = [PAPER_UPDATE[v][f"{tag}_delta_ppl"] for v in ("kn", "random")]
            table.append([_e(label), *(_num(s[f"{tag}_delta_ppl"]) for s in summaries.values()), *map(_num, paper)])
        parts.append("<h3>Updating facts</h3>")
        parts.append(_table(["measure", *map(_label, updates), "paper: knowledge neurons (BERT-base-cased)",
                             "paper: random neurons"], table))
        parts.append(
            '<p class="note">Each fact (h, r, t) is updated to t\' = another fact\'s answer of its relation: every '
            "knowledge neuron's value slot moves by −λ<sub>1</sub>·e(t) + λ<sub>2</sub>·e(t') (λ = 1, 8; e = the "
            "answer's first-token output embedding); neurons that are knowledge neurons of more than 10% of the "
            "relation's facts are left out. <b>P(new) &gt; P(old)</b>: share of the fact's prompts; <b>success</b>: "
            "share of facts where it holds on most prompts; <b>top-1 = new</b> is the paper's success rate and "
            "<b>change rate</b> the share of prompts answered t before whose top-1 changed. Collateral, as the "
            "official code measures it: 5 other facts of the same relation and 5 of other relations, all prompts; "
            "ΔPPL = exp(mean −log p per token, after) − exp(…, before), over all edits (a difference of "
            "exponentiated means: no interval). Every other figure is a mean over the edited facts with its 95% "
            "interval (bootstrap over facts; Wilson's for a share of facts), its n and the paired p-value against "
            "the same update through as many random neurons of the same layers on the same facts (the control "
            "named in the column), as the study stored them. <i>Sign of the "
            "activation</i>: each delta times the sign of the neuron's mean activation on the fact's prompts (a "
            "gated FFN's neurons are often negative, where the plain formula pushes away from t'). <i>Norm-scaled"
            "</i>: the official code's λ<sub>i</sub> · |v<sub>i</sub>| / |e|.</p>")
    erases = erase_variants(rows)
    if erases:
        relation = next((r["relation"] for r in rows if r["variant"] == erases[0] and not r.get("fact_id")), "")
        table = []
        for variant in erases:
            s = erase_summary(rows, variant)
            control = CONTROLS.get(variant)
            ppl = [f"{_num(s[f'{tag}_ppl_before'])} → {_num(s[f'{tag}_ppl_after'])} "
                   f"({_pct_signed(s[f'{tag}_ppl_change'])}), n = {s[f'{tag}_facts']:.0f}" for tag in ("own", "other")]
            cells = [_e(show(aggregates, rows, variant, item, name_control=False)) for item in ERASE_FIGURES]
            table.append([_e(variant + (f" (p vs {control})" if control else "")), _num(s["neurons"]), ppl[0],
                          *cells[:3], ppl[1], *cells[3:]])
        parts.append(f"<h3>Erasing a relation: {_e(relation)}</h3>")
        parts.append(_table(["erase", "neurons", f"PPL of {relation} facts", f"Δp/p, {relation}",
                             f"top-1 right before, {relation}", f"top-1 right after, {relation}",
                             "PPL of other relations' facts", "Δp/p, other relations",
                             "top-1 right before, other relations", "top-1 right after, other relations"], table))
        parts.append(f'<p class="note">The relation\'s most common knowledge neurons have their value slots set to '
                     f"zero or to the unknown token's output embedding; the random control erases as many random "
                     f"neurons of the same layers. PPL = exp(mean over facts of the answer's mean −log p per token; "
                     f"no interval). Δp/p and top-1: means over facts with their 95% interval, n and, for the "
                     f"relation's neurons, the paired p-value against the random control (erase_random_*) on the "
                     f"same facts, as stored. For comparison, {_e(PAPER_ERASE)}.</p>")
    return "".join(parts)


def _pct_signed(value: float) -> str:
    return f"{value:+.0%}" if math.isfinite(value) else "–"
