"""How the ``editing`` study's figures are shown (:mod:`kneuron.studies.editing`): each mean over facts with its
stored 95% interval, n and paired p-value against the study's control (``kn`` vs ``random``, ``erase_*`` vs
``erase_random_*``), as the runner stored them (:meth:`~kneuron.studies.base.Study.aggregates`), never recomputed.

One list of figures (:data:`UPDATE_FIGURES`, :data:`ERASE_FIGURES`) serves the terminal summary
(:func:`editing_tables`) and the report's section (:mod:`kneuron.report.editing`), so both show the same measures.

The perplexities are not means over facts: the paper's ΔPPL is exp(mean log-PPL after) − exp(mean log-PPL before)
over the edits, a difference of exponentiated means, and the erase table's PPL is exp(mean log-PPL). They are
shown as before (:func:`~kneuron.studies.editing.update_summary`, :func:`~kneuron.studies.editing.erase_summary`),
with the number of edits or facts behind them and no interval.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kneuron.studies.base import number
from kneuron.studies.display import stored_figure
from kneuron.studies.editing import STUDY, erase_summary, update_summary
from kneuron.studies.intervals import find


@dataclass(frozen=True)
class Figure:
    """One mean over facts the study shows: its stored metric, its label, and whether it is a change (signed)."""

    metric: str
    label: str
    signed: bool = False
    percent: bool = True


#: the update figures, in the order shown (each a per-fact row's mean over the edited facts)
UPDATE_FIGURES = (
    Figure("neurons", "neurons per edit", percent=False),
    Figure("new_beats_old", "P(new) > P(old), prompts"),
    Figure("success", "success (facts)"),
    Figure("top1_new", "top-1 = new, prompts"),
    Figure("changed", "change rate"),
    Figure("intra_p_change", "Δp/p same relation", signed=True),
    Figure("inter_p_change", "Δp/p other relations", signed=True),
    Figure("intra_top1_kept", "top-1 kept, same relation"),
    Figure("inter_top1_kept", "top-1 kept, other relations"),
)

#: the erase figures (erased: the erased relation's facts; others: facts of other relations)
ERASE_FIGURES = (
    Figure("own_p_change", "erased: Δp/p", signed=True),
    Figure("own_top1_before", "erased: top-1 right before"),
    Figure("own_top1_after", "erased: top-1 right after"),
    Figure("other_p_change", "others: Δp/p", signed=True),
    Figure("other_top1_before", "others: top-1 right before"),
    Figure("other_top1_after", "others: top-1 right after"),
)

#: the study's controls (variant -> its control variant: same edit through as many random neurons of the same
#: layers), the paired tests of its stored aggregates (:attr:`kneuron.studies.catalog.editing.Editing.controls`)
CONTROLS: Mapping[str, str] = {"kn": "random", "kn_signed": "random_signed", "kn_slot_norm": "random_slot_norm",
                               "kn_slot_norm_signed": "random_slot_norm_signed",
                               "erase_zero": "erase_random_zero", "erase_unknown": "erase_random_unknown"}


def update_variants(rows: Sequence[dict]) -> list[str]:
    """The update variants of the rows, in order (those with ``edited`` rows)."""
    return list(dict.fromkeys(r["variant"] for r in rows if r["metric"] == "edited"))


def erase_variants(rows: Sequence[dict]) -> list[str]:
    """The erase variants of the rows, in order (those with a relation-level ``neurons`` row)."""
    return list(dict.fromkeys(r["variant"] for r in rows if r["metric"] == "neurons" and not r.get("fact_id")))


def show(aggregates: Sequence[dict], rows: Sequence[dict], variant: str, item: Figure, *,
         name_control: bool = True) -> str:
    """One figure: ``+12.3% [+4.0, +20.1], n = 16, p = 0.003 vs random`` from the stored aggregate
    (``name_control`` False: without ``vs random``, for a table whose heading names it); on an atlas studied
    before aggregates were stored, the bare mean with its n and what to re-run; a dash when neither."""
    return stored_figure(aggregates, rows, STUDY, variant, item.metric, percent=item.percent, signed=item.signed,
                         name_control=name_control)


def minus(text: str) -> str:
    """``text`` with the typographic minus of :func:`~kneuron.studies.intervals.format_interval`."""
    return text.replace("-", "−")


def perplexity_notes(rows: Sequence[dict], variant: str) -> list[tuple[str, str]]:
    """The update's ΔPPL as the paper computes it (no interval: a difference of exponentiated means), with the
    number of edits behind it."""
    s = update_summary(rows, variant)
    out = []
    for tag, label in (("intra", "ΔPPL same relation"), ("inter", "ΔPPL other relations")):
        edits = sum(1 for r in rows if r["variant"] == variant and r["metric"] == f"{tag}_log_ppl_after"
                    and r.get("fact_id") and math.isfinite(r["value"]))
        if edits:
            out.append((label, minus(f"{number(s[f'{tag}_delta_ppl'], '.3g')} over {edits} edits (no interval)")))
    return out


def erase_perplexities(rows: Sequence[dict], variant: str) -> list[tuple[str, str]]:
    """The erase's PPL before → after (exp of the mean log-PPL over facts; no interval) with its n."""
    s = erase_summary(rows, variant)
    out = []
    for tag, label in (("own", "erased: PPL"), ("other", "others: PPL")):
        if s[f"{tag}_facts"]:
            out.append((label, minus(f"{number(s[f'{tag}_ppl_before'], '.3g')} → "
                                     f"{number(s[f'{tag}_ppl_after'], '.3g')} "
                                     f"({number(s[f'{tag}_ppl_change'], '+.0%')}), n = {s[f'{tag}_facts']:.0f}")))
    return out


def heading(rows: Sequence[dict], variant: str, erase: bool = False) -> str:
    """``update kn: 12 of 16 facts edited; p vs random`` (the control the study declares for it, if any)."""
    control = CONTROLS.get(variant)
    of = [kn for kn, random in CONTROLS.items() if random == variant]
    against = f"; p vs {control}" if control else (f"; the control of {', '.join(of)}" if of else "; no control")
    if erase:
        neurons = erase_summary(rows, variant)["neurons"]
        return f"{variant}: {number(neurons, '.0f')} neurons erased{against}"
    s = update_summary(rows, variant)
    return f"update {variant}: {s['edited']:.0f} of {s['facts']:.0f} facts edited{against}"


#: what every editing table's numbers are
CAPTION = ("means over facts [95% interval: bootstrap over facts; Wilson's for a share of facts], n facts, paired p "
           "against the control named above; ΔPPL and PPL: of exponentiated means (no interval)")
#: what the erase tables' prefixes mean
ERASE_CAPTION = "erased: the erased relation's facts; others: facts of other relations"


def editing_tables(rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[Table | Text]:
    """The terminal summary: a two-column table per update and per erase variant (titled with its control),
    each line a measure and its stored interval, n and p. Two columns, so that it reads at 80 columns; a pipe gets
    every cell whole (:mod:`kneuron.cli.output`)."""
    parts: list[Table | Text] = []
    for variants, figures, extra, erase in ((update_variants(rows), UPDATE_FIGURES, perplexity_notes, False),
                                            (erase_variants(rows), ERASE_FIGURES, erase_perplexities, True)):
        for variant in variants:
            table = Table(title=Text(heading(rows, variant, erase), style="bold"), title_justify="left",
                          show_edge=False)
            table.add_column("measure")
            table.add_column("mean [95% interval], n, p", justify="right")
            for item in figures:
                if find(aggregates, variant, item.metric).n or any(
                        r["variant"] == variant and r["metric"] == item.metric and r.get("fact_id") for r in rows):
                    table.add_row(Text(item.label), Text(show(aggregates, rows, variant, item, name_control=False)))
            for label, value in extra(rows, variant):
                table.add_row(Text(label), Text(value))
            parts.append(table)
        if variants:
            parts.append(Text(CAPTION + ("; " + ERASE_CAPTION if erase else ""), style="dim"))
    return parts


def format_summary(rows: Sequence[dict], aggregates: Sequence[dict] = (), width: int = 100) -> str:
    """:func:`editing_tables` as plain text (``width`` columns)."""
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, force_terminal=False)
    for part in editing_tables(rows, aggregates):
        console.print(part)
    return out.getvalue()
