"""The report's editing section: update success and collateral damage, and the erased relation, from the
``editing`` study's rows (:mod:`kneuron.studies.editing`), next to the paper's BERT figures.

Include it in a report with ``editing_section(data.rows("editing"))`` (an HTML fragment: headings, tables and
notes, no scripts; classes ``note`` and ``warn`` and left-aligned ``td.l`` as in the report's CSS).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from kneuron.studies.editing import erase_summary, update_summary

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


def _e(text: object) -> str:
    return html.escape(str(text))


def _pct(value: float, signed: bool = False) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:+.1%}" if signed else f"{value:.1%}"


def _num(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "–"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def update_variants(rows: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(r["variant"] for r in rows if r["metric"] == "edited"))


def erase_variants(rows: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(r["variant"] for r in rows if r["metric"] == "neurons" and not r.get("fact_id")))


def editing_section(rows: Sequence[dict]) -> str:
    """The editing section as an HTML fragment (a "not run" note when there are no rows)."""
    rows = list(rows)
    if not rows:
        return ("<h2>Editing knowledge</h2><p>Not run: <code>kneuron study editing --run ATLAS "
                "--erase RELATION</code></p>")
    parts = ["<h2>Editing knowledge</h2>"]
    updates = update_variants(rows)
    if updates:
        table = []
        for variant in updates:
            s = update_summary(rows, variant)
            table.append([_e(LABELS.get(variant, variant)), f"{s['edited']:.0f}/{s['facts']:.0f}",
                          _num(s["neurons"]), _pct(s["new_beats_old"]), _pct(s["success"]), _pct(s["top1_new"]),
                          _pct(s["changed"]), _num(s["intra_delta_ppl"]), _num(s["inter_delta_ppl"]),
                          _pct(s["intra_p_change"], True), _pct(s["inter_p_change"], True),
                          _pct(s["intra_top1_kept"]), _pct(s["inter_top1_kept"])])
        for variant, label in (("kn", "paper: knowledge neurons (BERT-base-cased)"),
                               ("random", "paper: random neurons")):
            p = PAPER_UPDATE[variant]
            table.append([f"<i>{_e(label)}</i>", "", "", "", "", _pct(p["top1_new"]), _pct(p["changed"]),
                          _num(p["intra_delta_ppl"]), _num(p["inter_delta_ppl"]), "", "", "", ""])
        parts.append("<h3>Updating facts</h3>")
        parts.append(_table(["edit", "facts edited", "neurons per edit", "P(new) > P(old), prompts",
                             "success, facts (majority of prompts)", "top-1 = new, prompts", "change rate",
                             "ΔPPL same relation", "ΔPPL other relations", "Δp/p same relation",
                             "Δp/p other relations", "top-1 kept, same relation", "top-1 kept, other relations"],
                            table))
        parts.append(
            '<p class="note">Each fact (h, r, t) is updated to t\' = another fact\'s answer of its relation: every '
            "knowledge neuron's value slot moves by −λ<sub>1</sub>·e(t) + λ<sub>2</sub>·e(t') (λ = 1, 8; e = the "
            "answer's first-token output embedding); neurons that are knowledge neurons of more than 10% of the "
            "relation's facts are left out. <b>P(new) &gt; P(old)</b>: share of the fact's prompts; <b>success</b>: "
            "share of facts where it holds on most prompts; <b>top-1 = new</b> is the paper's success rate and "
            "<b>change rate</b> the share of prompts answered t before whose top-1 changed. Collateral, as the "
            "official code measures it: 5 other facts of the same relation and 5 of other relations, all prompts; "
            "ΔPPL = exp(mean −log p per token, after) − exp(…, before), over all edits. <i>Sign of the "
            "activation</i>: each delta times the sign of the neuron's mean activation on the fact's prompts (a "
            "gated FFN's neurons are often negative, where the plain formula pushes away from t'). <i>Norm-scaled"
            "</i>: the official code's λ<sub>i</sub> · |v<sub>i</sub>| / |e|.</p>")
    erases = erase_variants(rows)
    if erases:
        relation = next((r["relation"] for r in rows if r["variant"] == erases[0] and not r.get("fact_id")), "")
        table = []
        for variant in erases:
            s = erase_summary(rows, variant)
            table.append([_e(variant), _num(s["neurons"]),
                          f"{_num(s['own_ppl_before'])} → {_num(s['own_ppl_after'])} "
                          f"({_pct(s['own_ppl_change'], True)})",
                          f"{_pct(s['own_top1_before'])} → {_pct(s['own_top1_after'])}",
                          f"{_num(s['other_ppl_before'])} → {_num(s['other_ppl_after'])} "
                          f"({_pct(s['other_ppl_change'], True)})",
                          f"{_pct(s['other_top1_before'])} → {_pct(s['other_top1_after'])}",
                          f"{s['own_facts']:.0f} / {s['other_facts']:.0f}"])
        parts.append(f"<h3>Erasing a relation: {_e(relation)}</h3>")
        parts.append(_table(["erase", "neurons", f"PPL of {relation} facts", f"top-1 right, {relation}",
                             "PPL of other relations' facts", "top-1 right, other relations", "facts (own / other)"],
                            table))
        parts.append(f'<p class="note">The relation\'s most common knowledge neurons have their value slots set to '
                     f"zero or to the unknown token's output embedding; the random control erases as many random "
                     f"neurons of the same layers. PPL = exp(mean over facts of the answer's mean −log p per token). "
                     f"For comparison, {_e(PAPER_ERASE)}.</p>")
    return "".join(parts)
