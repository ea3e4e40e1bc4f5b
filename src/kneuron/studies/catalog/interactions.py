"""``interactions``: how a fact's knowledge neurons act together (:mod:`kneuron.studies.interactions`): singles,
pairs (synergy or redundancy), all, and how many of them it takes to remove 50% / 90% of the answer's probability
against random neurons of the same layers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from kneuron.studies.base import FACTS_LIMIT, SEED, Option, Study, StudyContext, StudyOutput
from kneuron.studies.display import fit_table, natural_width
from kneuron.studies.interactions import interaction_figures, interactions_study, study_params
from kneuron.studies.registry import register_study


@register_study
class Interactions(Study):
    """Each fact's knowledge neurons suppressed alone, in pairs (synergy or redundancy) and all together, and the
    top-k it takes to remove 50% / 90% of the answer's probability, against random neurons.

    Control: the knowledge neurons' cumulative curve and top-k needed against as many random neurons of the same
    layers on the same fact (``kn`` vs ``random``, same metric). Singles and pairs have no control (their
    synergy is measured against additivity, not against random neurons)."""

    name = "interactions"
    title = "Neuron interactions"
    group = "beyond"
    controls = {"kn": "random"}
    options = (SEED,
               Option("cap", int, 8, "Each fact's best-scored neurons whose singles and pairs are measured (8: up to "
                      "28 pairs).", min=1),
               Option("max_k", int, None, "The longest cumulative curve (top-k neurons; default: all of the "
                      "fact's).", min=1),
               Option("tolerance", float, 0.02, "A pair whose Δ is within this of the sum of its neurons' is "
                      "additive (in units of Δp/p).", min=0.0),
               FACTS_LIMIT)

    def run(self, context: StudyContext) -> StudyOutput:
        options, limit = context.options, context.options.get("facts_limit")
        facts = context.facts[:limit] if limit else context.facts
        advance = context.progress("interactions", len(facts))
        rows = interactions_study(context.lm, facts, context.atlas.all_refined(), cap=options["cap"],
                                  max_k=options["max_k"], tolerance=options["tolerance"], seed=options["seed"],
                                  on_fact=lambda _fact: advance())
        return StudyOutput(rows, facts=[fact.id for fact in facts])

    def measures(self, rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str]]:
        return []

    def summary(self, output: StudyOutput, context: StudyContext) -> list:
        studied = int(study_params(output.rows).get("facts", 0))
        per_fact = output.seconds / studied if studied else math.nan
        return [interactions_table(output.rows, context.run_path, per_fact, width=context.width,
                                   aggregates=output.aggregates)]



def interactions_table(rows: Sequence[dict], run: Path | str, seconds_per_fact: float = math.nan,
                       width: int | None = None, aggregates: Sequence[dict] = ()) -> Table:
    """The study's summary as one rich table, a line per figure and a column per group (all facts, then each
    relation), each cell the stored mean with its 95% interval, n and paired p
    (:func:`~kneuron.studies.interactions.interaction_figures`); on a terminal too narrow for it (``width``; None:
    any width, as in a pipe) the all-facts column alone, one figure per line."""
    params = study_params(rows)
    cap = int(params.get("cap", 0))
    title = (f"Neuron interactions of {int(params.get('facts', 0))} facts (top {cap} neurons: up to "
             f"{cap * (cap - 1) // 2} pairs per fact), stored in {run}")
    caption = ("means over facts [95% interval: bootstrap over facts; Wilson's for a share of facts], n facts, and "
               "for the top-k figures the paired p against random neurons of the same layers; Δ: mean Δp/p of the "
               "answer with the neurons set to 0 at the answer position (best: the best-scored neuron alone); pairs: "
               f"synergistic when Δ(a,b) < Δ(a) + Δ(b) − {params.get('tolerance', math.nan):g}, redundant when above "
               "the sum by as much, else additive (mult.: against the product of the singles' ratios); top-k for "
               "−50% / −90%: how many top-k neurons by score (or random neurons) first remove that much, over the "
               "facts that get there")
    if math.isfinite(seconds_per_fact):
        caption += f"; {seconds_per_fact:.2f} s per fact"
    groups, lines = interaction_figures(rows, aggregates)
    header = ["measure", *groups]
    if width is not None and natural_width(header, lines) > width:
        header, lines = header[:2], [line[:2] for line in lines]
        caption += "; per relation: a wider terminal, or `kneuron report`"
    return fit_table(title, header, lines, width, caption=caption)
