"""``kneuron study interactions --run ATLAS``: how a fact's knowledge neurons act together
(:mod:`kneuron.studies.interactions`): singles, pairs (synergy or redundancy), all, and how many of them it takes
to remove 50% / 90% of the answer's probability against random neurons of the same layers; stored as the
``interactions`` study and printed as one table (overall and per relation)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table
from rich.text import Text

from kneuron.cli.app import atlas_model, console, err_console, require_done_facts
from kneuron.errors import KneuronError


def interactions_command(run: Path, model: str | None, device: str, *, seed: int, cap: int, max_k: int | None,
                         tolerance: float, facts_limit: int | None) -> None:
    """Run the study on the atlas's first ``facts_limit`` done facts (all by default), store it, print its table."""
    from kneuron.store import Atlas

    with Atlas.open(run) as atlas:
        require_done_facts(atlas, run)
        lm = atlas_model(atlas, model, device)
        rows, seconds = run_interactions_study(atlas, lm, seed=seed, cap=cap, max_k=max_k, tolerance=tolerance,
                                               facts_limit=facts_limit)
    console.print(interactions_table(rows, run, seconds))


def run_interactions_study(atlas, lm, *, seed: int = 0, cap: int = 8, max_k: int | None = None,
                           tolerance: float = 0.02, facts_limit: int | None = None,
                           ) -> tuple[list[dict], float]:
    """Compute the rows on the atlas's done facts (the first ``facts_limit``), write them under ``interactions``
    (with the facts they covered) and return them with the mean seconds per studied fact; checks that the
    model's weights are unchanged."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kneuron.store import model_identity
    from kneuron.studies.interactions import STUDY, interactions_study, study_params

    with atlas.snapshot():  # the facts and neurons of one moment, also while a run writes
        facts = atlas.facts()
        neurons = atlas.all_refined()
    facts = facts[:facts_limit] if facts_limit else facts
    identity = model_identity(lm)["fingerprint"]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    start = time.perf_counter()
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("interactions", total=len(facts))
        rows = interactions_study(lm, facts, neurons, cap=cap, max_k=max_k, tolerance=tolerance, seed=seed,
                                  on_fact=lambda _fact: progress.advance(task))
    spent = time.perf_counter() - start
    if model_identity(lm)["fingerprint"] != identity:  # pragma: no cover - would be a bug
        raise KneuronError("The model's weights changed during the interactions study; please report this.")
    studied = int(study_params(rows).get("facts", 0))
    per_fact = spent / studied if studied else math.nan
    err_console.print(f"[dim]interactions {spent:.1f} s, {per_fact:.2f} s per fact with neurons[/dim]",
                      highlight=False)
    atlas.write_results(STUDY, rows, facts=[fact.id for fact in facts])
    return rows, per_fact


def _num(value: float, spec: str) -> str:
    return f"{value:{spec}}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


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
    row per relation and overall, or, on a terminal narrower than :data:`WIDE_TABLE` (``width``, default the
    console's), the overall figures one per line."""
    from kneuron.studies.interactions import interaction_summary, study_params

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
    if (console.width if width is None else width) < WIDE_TABLE:
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
