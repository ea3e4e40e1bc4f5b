"""The report's Consistency section: how consistent each fact's attributions are across its prompts, the Otsu split
into consistent and inconsistent facts (Chen et al., ICLR 2025), overall and per relation, and whether suppress /
amplify and editing work less well on the inconsistent facts, from the ``consistency`` study's rows
(:mod:`kneuron.studies.consistency`) and the other studies' per-fact rows."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kneuron.report import plots
from kneuron.report.parts import escape as _e
from kneuron.report.parts import image as _image
from kneuron.report.parts import number as _num
from kneuron.report.parts import table as _table
from kneuron.studies.consistency import (
    STUDY,
    effect_comparisons,
    fact_values,
    missing_studies,
    relation_names,
    split_lines,
    summary_values,
)
from kneuron.studies.display import stored_figure

TITLE = "Consistency across paraphrases"
#: what ../shared/PAPER.md says of Chen et al. (the report quotes nothing beyond it)
PAPER = ("Chen et al. (ICLR 2025), \"Knowledge Localization: Mission Not Accomplished? Enter Query Localization!\": "
         "many facts' neurons are not consistent across paraphrases; they split facts into consistent and "
         "inconsistent with an Otsu threshold on a consistency score.")
#: below this many facts the section warns that its figures are anecdotes
FEW_FACTS = 10
#: facts listed in the table of the least consistent
MAX_FACT_ROWS = 20
CLASS_COLORS = {"consistent": plots.COLORS["kn"], "inconsistent": plots.COLORS["baseline"],
                "not classed": plots.COLORS["random"]}


def _class(flag: float) -> str:
    return "consistent" if flag == 1.0 else "inconsistent" if flag == 0.0 else "not classed"


# ------------------------------------------------------------------------------------------------ figures


def consistency_figure(rows: Sequence[dict]) -> bytes | None:
    """Histograms of the facts' Jaccard (the consistency score, with the Otsu threshold) and rank correlation,
    stacked by class."""
    facts = fact_values(rows)
    if not facts:
        return None
    threshold = summary_values(rows, "otsu").get("threshold", math.nan)
    panels = [("jaccard", "mean pairwise Jaccard of the coarse sets (consistency score)", (0.0, 1.0))]
    if any(math.isfinite(v.get("rank_correlation", math.nan)) for v in facts.values()):
        panels.append(("rank_correlation", "mean pairwise Spearman over the kept union", (0.0, 1.0)))
    figure = Figure(figsize=(4.6 * len(panels) + 0.6, 3.6))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, (metric, title, span) in zip(axes, panels, strict=True):
        groups = {name: [v[metric] for v in facts.values()
                         if _class(v.get("consistent", math.nan)) == name and math.isfinite(v.get(metric, math.nan))]
                  for name in CLASS_COLORS}
        shown = [(name, values) for name, values in groups.items() if values]
        if not shown:
            continue
        lowest = min(min(values) for _, values in shown)
        bins = np.linspace(min(span[0], lowest), span[1], 21)
        axis.hist([values for _, values in shown], bins=bins, stacked=True, edgecolor="#555555", linewidth=0.4,
                  color=[CLASS_COLORS[name] for name, _ in shown],
                  label=[f"{name} (n={len(values)})" for name, values in shown])
        if metric == "jaccard" and math.isfinite(threshold):
            axis.axvline(threshold, color="black", linestyle="--", linewidth=1.0, label=f"Otsu {threshold:.2f}")
        axis.set_xlabel(title, fontsize=8)
        axis.set_ylabel("facts")
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return plots.to_png(figure)


def relations_figure(rows: Sequence[dict]) -> bytes | None:
    """Each fact's Jaccard per relation (one dot per fact, coloured by class) with the Otsu threshold."""
    facts = fact_values(rows)
    relation_of = {r["fact_id"]: r["relation"] for r in rows if r["variant"] == "fact" and r.get("fact_id")}
    relations = relation_names(rows)
    if not facts or not relations:
        return None
    threshold = summary_values(rows, "otsu").get("threshold", math.nan)
    figure = Figure(figsize=(7.5, 0.3 * len(relations) + 1.4))
    axis = figure.subplots()
    seen = set()
    for y, relation in enumerate(relations):
        members = [(fid, v) for fid, v in facts.items() if relation_of.get(fid) == relation
                   and math.isfinite(v.get("jaccard", math.nan))]
        for k, (_, v) in enumerate(members):
            name = _class(v.get("consistent", math.nan))
            jitter = 0.0 if len(members) == 1 else 0.3 * (k / (len(members) - 1) - 0.5)
            axis.scatter(v["jaccard"], y + jitter, s=18, color=CLASS_COLORS[name], edgecolor="#555555",
                         linewidth=0.4, label=None if name in seen else name, zorder=3)
            seen.add(name)
    if math.isfinite(threshold):
        axis.axvline(threshold, color="black", linestyle="--", linewidth=1.0, label=f"Otsu {threshold:.2f}")
    axis.set_yticks(range(len(relations)), relations, fontsize=8)
    axis.set_ylim(len(relations) - 0.4, -0.6)  # the first relation on top
    axis.set_xlim(-0.02, 1.02)
    axis.set_xlabel("mean pairwise Jaccard of the coarse sets")
    axis.grid(axis="x", alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return plots.to_png(figure)


# ------------------------------------------------------------------------------------------------ the section


def consistency_section(rows: Sequence[dict], others: Mapping[str, Sequence[dict]] | None = None,
                        covered: Mapping[str, object] | None = None, done: Mapping[str, object] | None = None,
                        source: str = "ATLAS", aggregates: Sequence[dict] = ()) -> str:
    """The section as an HTML fragment; says how to run the study when the atlas has no ``consistency`` rows.

    ``others``: the other studies' rows (``suppress_amplify``, ``editing``); ``covered`` / ``done``: the facts the
    study covered (``Atlas.coverage()["consistency"]``) and the atlas's done facts now (``Atlas.done_coverage()``);
    ``aggregates``: the study's stored ones, whose intervals and n each mean over facts shows.
    """
    rows = list(rows)
    others = others or {}
    if not rows:
        return (f"<h2>{TITLE}</h2><p>Not run: <code>kneuron study consistency --run {_e(source)}</code> (no model "
                "needed).</p>")
    overall, otsu = summary_values(rows), summary_values(rows, "otsu")
    union = summary_values(rows, "params").get("union_share", math.nan)
    n_facts = int(overall.get("facts", 0))
    parts = [f"<h2>{TITLE}</h2>",
             f'<p class="note">{_e(PAPER)} Here, per fact: the <b>Jaccard</b> |C(i) ∩ C(j)| / |C(i) ∪ C(j)| of the '
             "coarse sets of two of its prompts (the neurons above the coarse threshold in that prompt's "
             "attribution), averaged over its prompt pairs, and the <b>rank correlation</b> (Spearman) of the two "
             "prompts' scores over the fact's kept union (the neurons where some prompt of the fact scores at least "
             f"{_num(union, '.0%')} of its maximum), averaged the same way. The consistency score is the Jaccard: "
             "the method localises a fact through its coarse sets, and it is defined for every atlas. The Otsu "
             "threshold maximises the between-class variance of the facts' Jaccards; a fact is consistent above "
             "it. Otsu always splits two or more distinct values: where it falls is not a test that two groups "
             "exist.</p>"]
    if covered is not None and done is not None and covered.get("digest") != done.get("digest"):
        parts.append(f'<div class="warn"><b>Not current:</b> the study covered {_e(covered.get("facts"))} facts, the '
                     f"atlas has {_e(done.get('facts'))} done facts now; rerun <code>kneuron study consistency --run "
                     f"{_e(source)}</code>.</div>")
    if n_facts < FEW_FACTS:
        parts.append(f'<div class="warn"><b>Only {n_facts} fact(s).</b> Every figure below is over {n_facts} or '
                     "fewer facts (n is shown): read them as examples, not as findings.</div>")
    table = [_summary_cells(_e(relation), summary_values(rows, "relation", relation), rows, aggregates, relation)
             for relation in relation_names(rows)]
    table.append(_summary_cells("<b>all facts</b>", overall, rows, aggregates))
    parts.append(_table(["relation", "facts", "mean Jaccard", "mean rank correlation", "share consistent",
                         "consistent", "inconsistent"], table))
    parts.append('<p class="note">Means over facts with their 95% interval (bootstrap over facts; Wilson\'s for '
                 "the share of facts) and n, as the study stored them; no control (agreement between a fact's own "
                 "prompts has no chance-level measure on the same facts).</p>")
    if math.isfinite(otsu.get("threshold", math.nan)):
        parts.append(f"<p>Otsu threshold on the Jaccard: <b>{otsu['threshold']:.3f}</b> over "
                     f"{otsu.get('facts', 0):.0f} facts; {overall.get('inconsistent', 0):.0f} of them "
                     f"({_num(overall.get('inconsistent_share', math.nan), '.1%')}) are inconsistent.</p>")
    else:
        parts.append(f'<p class="note">No Otsu split: {otsu.get("facts", 0):.0f} fact(s) with a finite Jaccard '
                     "(fewer than 2, or all equal).</p>")
    agreement = overall.get("score_agreement", math.nan)
    if math.isfinite(agreement):
        parts.append(f'<p class="note">The two scores rank the facts alike to a Spearman correlation of '
                     f"{agreement:.2f} across the facts.</p>")
    parts.append(_image(consistency_figure(rows), "distribution of the consistency scores"))
    parts.append(_image(relations_figure(rows), "consistency score per relation"))
    parts.append(_effects(rows, others, source, aggregates))
    parts.append(_least_consistent(rows))
    return "".join(parts)


def _summary_cells(name: str, values: Mapping[str, float], rows: Sequence[dict], aggregates: Sequence[dict],
                   relation: str = "") -> list[str]:
    return [name, f"{values.get('facts', 0):.0f}",
            *(_e(stored_figure(aggregates, rows, STUDY, "fact", metric, relation, percent=percent, signed=False))
              for metric, percent in (("jaccard", False), ("rank_correlation", False), ("consistent", True))),
            f"{values.get('consistent', 0):.0f}", f"{values.get('inconsistent', 0):.0f}"]


def _effects(rows: Sequence[dict], others: Mapping[str, Sequence[dict]], source: str,
             aggregates: Sequence[dict] = ()) -> str:
    comparisons = effect_comparisons(rows, others)
    parts = ["<h3>Do the interventions work less well on inconsistent facts?</h3>"]
    if comparisons:
        table = []
        for (study, variant, _label, split), (label, consistent, inconsistent) in zip(
                comparisons, split_lines(rows, comparisons, aggregates), strict=True):
            (mean_c, _), (mean_i, _) = split["consistent"], split["inconsistent"]
            table.append([_e(label), f"<code>{_e(study)}</code> {_e(variant)}", _e(consistent), _e(inconsistent),
                          _num(mean_i - mean_c, "+.1%")])
        parts.append(_table(["measure", "rows", "consistent facts", "inconsistent facts",
                             "inconsistent − consistent"], table, left=2))
        parts.append('<p class="note">Means over the facts of each class that have the row, with their 95% interval '
                     "(bootstrap over facts; Wilson's for a share of facts) and n, as the consistency study stored "
                     "them (a class whose study changed since shows its bare mean: re-run the consistency study). "
                     "The two classes hold different facts, so there is no paired test; the difference is shown "
                     "bare. Suppress: a larger drop (more negative) is a stronger effect; amplify and editing: "
                     "larger is stronger. Editing: facts that were edited (an edit can be refused, e.g. when every "
                     "neuron is shared by the relation).</p>")
    for name, hint in missing_studies(comparisons, source):
        parts.append(f'<p class="note">No {_e(name)} rows yet: run <code>{_e(hint)}</code>.</p>')
    return "".join(parts)


def _least_consistent(rows: Sequence[dict]) -> str:
    relation_of = {r["fact_id"]: r["relation"] for r in rows if r["variant"] == "fact" and r.get("fact_id")}
    facts = sorted(fact_values(rows).items(),
                   key=lambda item: (not math.isfinite(item[1].get("jaccard", math.nan)),
                                     item[1].get("jaccard", math.nan), item[0]))
    shown = facts[:MAX_FACT_ROWS]
    table = [[_e(fid), _e(relation_of.get(fid, "")), f"{v.get('prompts', 0):.0f}",
              _num(v.get("jaccard", math.nan), ".3f"), _num(v.get("rank_correlation", math.nan), ".3f"),
              _class(v.get("consistent", math.nan))] for fid, v in shown]
    return (f"<details><summary>The {len(shown)} least consistent of {len(facts)} facts</summary>"
            + _table(["fact", "relation", "prompts", "Jaccard", "rank correlation", "class"], table, left=2)
            + "</details>")
