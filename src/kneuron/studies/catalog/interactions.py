"""``interactions``: how a fact's knowledge neurons act together (:mod:`kneuron.studies.interactions`): singles,
pairs (synergy or redundancy), all, and how many of them it takes to remove 50% / 90% of the answer's probability
against random neurons of the same layers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table
from rich.text import Text

from kneuron.studies.base import FACTS_LIMIT, SEED, Option, Study, StudyContext, StudyOutput
from kneuron.studies.base import number as _num
from kneuron.studies.interactions import interaction_summary, interactions_study, study_params
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
        return [interactions_table(output.rows, context.run_path, per_fact, width=context.width)]



def _needed(entry: dict, level: int, variant: str) -> str:
    """``mean k (reached/facts)``; ``– (0/n)`` when no fact reaches the level."""
    mean, reached_n = entry.get(f"needed {level} {variant}", (math.nan, 0))
    share, facts = entry.get(f"reached {level} {variant}", (math.nan, 0))
    if not facts:
        return "–"
    return f"{_num(mean, '.1f') if reached_n else '–'} ({round(share * facts)}/{facts})"


def _shares(entry: dict, suffix: str = "") -> str:
    parts = [_num(entry.get(f"{kind}{suffix}", (math.nan, 0))[0], ".0%") for kind in ("synergistic", "redundant")]
    if not suffix:
        parts.append(_num(entry.get("additive", (math.nan, 0))[0], ".0%"))
    return " / ".join(parts)


#: the terminal width below which the per-relation table cannot be read and the overall figures are shown as a
#: two-column table instead
WIDE_TABLE = 130


def interactions_table(rows: Sequence[dict], run: Path | str, seconds_per_fact: float = math.nan,
                       width: int | None = None) -> Table:
    """The study's summary (:func:`~kneuron.studies.interactions.interaction_summary`) as one rich table: a
    row per relation and overall, or, on a terminal narrower than :data:`WIDE_TABLE` (``width``; None: wide), the
    overall figures one per line."""
    params = study_params(rows)
    cap = int(params.get("cap", 0))
    title = (f"Neuron interactions of {int(params.get('facts', 0))} facts (top {cap} neurons: up to "
             f"{cap * (cap - 1) // 2} pairs per fact), stored in {run}")
    caption = ("means over facts; KN: knowledge neurons per fact; Δ: mean Δp/p of the answer with the neurons set to "
               f"0 at the answer position (best: the best-scored neuron alone); pairs: synergistic when Δ(a,b) < Δ(a) "
               f"+ Δ(b) − {params.get('tolerance', math.nan):g}, redundant when above the sum by as much, else "
               "additive (mult.: against the product of the singles' ratios); −50% / −90%: how many top-k neurons "
               "by score (or random neurons of the same layers) first remove that much, mean k over the facts that "
               "get there (reached/facts; –: none)")
    if math.isfinite(seconds_per_fact):
        caption += f"; {seconds_per_fact:.2f} s per fact"
    if width is not None and width < WIDE_TABLE:
        return _narrow_table(interaction_summary(rows).get("all", {}), title, caption)
    table = Table(title=Text(title, style="bold"), title_justify="left", show_edge=False, caption=caption,
                  caption_justify="left")
    for column in ("relation", "facts", "KN", "Δ best", "Δ all", "pairs syn / red / add", "mult. syn / red",
                   "−50%: KN", "random", "−90%: KN", "random"):
        table.add_column(column, justify="left" if column == "relation" else "right")
    for group, entry in interaction_summary(rows).items():
        neurons, n = entry.get("neurons", (math.nan, 0))
        if not n:
            continue
        table.add_row(group, str(n), _num(neurons, ".1f"), _num(entry["best single"][0], "+.1%"),
                      _num(entry["all"][0], "+.1%"), _shares(entry), _shares(entry, " (mult.)"),
                      _needed(entry, 50, "kn"), _needed(entry, 50, "random"), _needed(entry, 90, "kn"),
                      _needed(entry, 90, "random"), end_section=group == "all")
    return table


def _narrow_table(entry: dict, title: str, caption: str) -> Table:
    """The overall figures as (measure, value) lines, for a narrow terminal (the report has the per-relation ones)."""
    table = Table(title=Text(title, style="bold"), title_justify="left", show_edge=False,
                  caption=caption + "; per relation: a terminal of 130 columns, or `kneuron report`",
                  caption_justify="left")
    table.add_column("all facts")
    table.add_column("value", justify="right")
    neurons, n = entry.get("neurons", (math.nan, 0))
    if not n:
        return table
    for label, value in (
            ("facts", str(n)), ("knowledge neurons per fact", _num(neurons, ".1f")),
            ("Δ, best-scored neuron alone", _num(entry["best single"][0], "+.1%")),
            ("Δ, all knowledge neurons", _num(entry["all"][0], "+.1%")),
            ("pairs: synergistic / redundant / additive", _shares(entry)),
            ("pairs, multiplicative null: synergistic / redundant", _shares(entry, " (mult.)")),
            ("top-k for −50%: knowledge neurons", _needed(entry, 50, "kn")),
            ("top-k for −50%: random neurons", _needed(entry, 50, "random")),
            ("top-k for −90%: knowledge neurons", _needed(entry, 90, "kn")),
            ("top-k for −90%: random neurons", _needed(entry, 90, "random"))):
        table.add_row(label, value)
    return table
