"""The report's Neuron interactions section: a fact's knowledge neurons suppressed alone, in pairs (synergy or
redundancy) and all together, and the cumulative curves (how many neurons it takes to remove 50% / 90% of the
answer's probability) against random neurons of the same layers, from the ``interactions`` study's rows
(:mod:`kneuron.studies.interactions`)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

from kneuron.report import plots
from kneuron.report.parts import escape as _e
from kneuron.report.parts import image as _image
from kneuron.report.parts import number as _num
from kneuron.report.parts import table as _table
from kneuron.studies.interactions import interaction_figures, study_params

TITLE = "Neuron interactions"
#: below this many facts the section warns that its means are anecdotes
FEW_FACTS = 10
#: rows of the per-fact table
MAX_FACT_ROWS = 40
#: what ../shared/PAPER.md says (the report quotes nothing beyond it)
PAPER = ('Among the limits the authors name: "neuron interactions not studied". The paper suppresses a fact\'s '
         "knowledge neurons all together (−29.03% on average on BERT-base-cased, random neurons of the same layers "
         "barely moving it).")


def _pct(value: float, signed: bool = True) -> str:
    if not math.isfinite(value):
        return "–"
    if not signed:
        return f"{value:.0%}"
    return f'<span class="{"neg" if value < 0 else "pos"}">{value:+.1%}</span>'


def _needed(mean: float, reached: int, facts: int) -> str:
    """``mean k (reached/facts)``; ``– (0/n)`` when no fact gets there."""
    return f"{_num(mean, '.1f') if reached else '–'} ({reached}/{facts})" if facts else "–"


def _shares(synergistic: float, redundant: float, additive: float | None = None) -> str:
    parts = [_pct(synergistic, False), _pct(redundant, False)]
    return " / ".join(parts if additive is None else [*parts, _pct(additive, False)])


def _fact_rows(rows: Sequence[dict]) -> list[list[str]]:
    per: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
    relation: dict[str, str] = {}
    for r in rows:
        if r["fact_id"]:
            per[r["fact_id"]][r["variant"], r["metric"]] = r["value"]
            relation[r["fact_id"]] = r["relation"]
    out = []
    for fact_id in sorted(per, key=lambda f: (relation[f], f))[:MAX_FACT_ROWS]:
        v = per[fact_id]

        def get(variant: str, metric: str, v=v) -> float:
            return v.get((variant, metric), math.nan)

        count = int(get("pairs", "count")) if math.isfinite(get("pairs", "count")) else 0
        shares = (_shares(get("pairs", "synergistic"), get("pairs", "redundant"), get("pairs", "additive"))
                  if count else "no pair")
        out.append([_e(fact_id), _e(relation[fact_id]), _num(get("kn", "neurons"), ".0f"),
                    _pct(get("single", "delta:1")), _pct(get("kn", "suppress_all")), f"{shares} (n={count})",
                    *[_num(get(variant, f"needed_{level}"), ".0f")
                      for level in (50, 90) for variant in ("kn", "random")]])
    return out


def interactions_section(rows: Sequence[dict], covered: Mapping[str, object] | None = None,
                         done_facts: int = 0, aggregates: Sequence[dict] = ()) -> str:
    """The section as an HTML fragment; empty when the atlas has no ``interactions`` rows (``kneuron study
    interactions`` is not part of ``study all``). ``covered``: the facts the study covered
    (``Atlas.coverage()["interactions"]``); ``aggregates``: the study's stored ones, whose intervals, n and paired
    p each mean shows (the bare means with their n on an atlas studied before they were stored)."""
    rows = list(rows)
    if not rows:
        return ""
    params = study_params(rows)
    studied = int(params.get("facts", 0))
    cap, tolerance = int(params.get("cap", 0)), params.get("tolerance", math.nan)
    max_k = int(params.get("max_k", 0))
    facts = covered.get("facts") if covered else None
    scope = f" of the {facts} it covered" if facts is not None else ""
    scope += f" (the atlas has {done_facts} done facts)" if done_facts else ""
    parts = [f"<h2>{TITLE}</h2>",
             f'<p class="note">{_e(PAPER)} Here each fact\'s knowledge neurons, ranked by their score, are set to 0 '
             "at the answer position one at a time, in every pair of its best-scored "
             f"{cap} (up to {cap * (cap - 1) // 2} pairs), all together, and cumulatively (the top-k for k = 1, 2, "
             f"… {'all of them' if not max_k else f'up to {max_k}'}), against the first k of as many random neurons "
             "of the same layers (seeded per fact). Δ is the suppress / amplify study's measure: the mean over the "
             "fact's prompts of (p<sub>after</sub> − p<sub>before</sub>) / p<sub>before</sub> of the answer; Δ(all) "
             f"is that study's value. {studied} facts with knowledge neurons{scope}.</p>"]
    if studied < FEW_FACTS:
        parts.append(f'<div class="warn"><b>Only {studied} fact(s).</b> Every mean below is over {studied} or fewer '
                     "facts (n is shown): read them as examples, not as findings.</div>")
    parts.append("<h3>Synergy, redundancy and neurons needed</h3>")
    groups, lines = interaction_figures(rows, aggregates)
    parts.append(_table(["measure", *groups], [[_e(cell) for cell in line] for line in lines]))
    parts.append(f'<p class="note">Means over facts (a fact\'s shares are over its pairs) with their 95% interval '
                 "(bootstrap over facts; Wilson's for a share of facts), n and, for the top-k figures, the paired p "
                 "against random neurons of the same layers on the same facts, as the study stored them. "
                 "Interaction of a pair = "
                 f"Δ(a, b) − Δ(a) − Δ(b): <b>synergistic</b> below −{tolerance:g} (the pair removes more than its "
                 f"two neurons' sum), <b>redundant</b> above +{tolerance:g} (less), else <b>additive</b>. Δ cannot go "
                 "below −100%, so two neurons that each remove 60% must look redundant under this additive null; the "
                 "<b>multiplicative null</b> expects, per prompt, the product of the two singles' ratios "
                 "p<sub>after</sub> / p<sub>before</sub> (independent factors), same tolerance. <b>−50% / −90%</b>: "
                 "the smallest k whose top-k (or k random neurons) remove that much of the answer's probability, "
                 "mean over the facts that get there (how many of them / facts); – when none does.</p>")
    parts.append(_image(plots.interactions_figure(rows, aggregates),
                        "cumulative suppression curves, knowledge neurons vs random"))
    parts.append("<h3>Per fact</h3>")
    parts.append(_table(["fact", "relation", "KN", "Δ best alone", "Δ all", "pairs syn / red / add",
                         "−50%: KN", "random", "−90%: KN", "random"], _fact_rows(rows), left=2))
    shown = len({r["fact_id"] for r in rows if r["fact_id"]})
    if shown > MAX_FACT_ROWS:
        parts.append(f'<p class="note">The first {MAX_FACT_ROWS} of {shown} facts (by relation).</p>')
    return "".join(parts)
