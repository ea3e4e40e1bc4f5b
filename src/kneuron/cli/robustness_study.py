"""``kneuron study robustness --run ATLAS``: edits under Niu et al.'s tests
(:mod:`kneuron.studies.edit_robustness`): bijective symmetry, aliases of the subject, paraphrases held out when
the neurons were refined, CounterFact's neighbourhood, and probability vs top-1; stored as the ``edit_robustness``
study and printed as a short table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.table import Table
from rich.text import Text

from kneuron.cli.app import atlas_model, console, err_console
from kneuron.errors import KneuronError


def robustness_study(run: Path, model: str | None, device: str, seed: int) -> list[dict]:
    """Run the study on the atlas at ``run`` (refusing, in one line, an atlas without done facts), store it, print
    one line per test that could not run and the summary table; returns the rows."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kneuron.store import Atlas
    from kneuron.studies.edit_robustness import run_edit_robustness

    with Atlas.open(run) as atlas:
        with atlas.snapshot():
            done = atlas.facts()
        if not done:
            raise KneuronError(f"{run} has no computed facts yet: run `kneuron run --out {run}` (or let it finish).")
        lm = atlas_model(atlas, model, device)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        start = time.perf_counter()
        with Progress(*columns, console=err_console, transient=True) as progress:
            task = progress.add_task("edit robustness", total=len(done))
            rows, notes = run_edit_robustness(atlas, lm, seed=seed,
                                              on_fact=lambda n, _fact: progress.update(task, completed=n + 1))
    err_console.print(f"[dim]edit robustness {time.perf_counter() - start:.1f} s[/dim]", highlight=False)
    for note in notes:
        err_console.print(Text(f"note: {note}", style="yellow"), soft_wrap=True)
    print_robustness_summary(rows, run)
    return rows


def robustness_tables(rows: Sequence[dict], run: Path | str) -> list[Table | Text]:
    """Per variant: one table of the prompt sets (P(new) > P(old), top-1 = new, P(new) rose, top-1 became new) and
    a line each for the old reverse fact, the neighbourhood and the recomputed refined sets."""
    from kneuron.studies.edit_robustness_summary import (
        percent,
        robustness_summary,
        robustness_variants,
        summary_lines,
        summary_table,
    )

    parts: list[Table | Text] = []
    for variant in robustness_variants(rows):
        s = robustness_summary(rows, variant)
        table = Table(title=Text(f"Edit robustness ({variant}): {s['edited']:.0f} of {s['facts']:.0f} facts updated, "
                                 f"stored in {run}", style="bold"), title_justify="left", show_edge=False)
        for name, justify in (("prompt set", "left"), ("facts", "right"), ("P(new) > P(old)", "right"),
                              ("top-1 = new", "right"), ("P(new) rose", "right"), ("top-1 became new", "right")):
            table.add_column(name, justify=justify)
        for label, count, beats, top1, rose, became in summary_table(rows, variant):
            table.add_row(label, f"{count:.0f}", percent(beats), percent(top1), percent(rose), percent(became))
        parts.append(table)
        lines = summary_lines(s)
        lines.append("kept / held-out paraphrases: the update goes through the neurons refined again from the kept "
                     "prompts only; 'held-out, all-prompt neurons' is the ordinary update on the same held-out "
                     "prompts. P(new) rose: the new answer's first token (the one top-1 is about); reverse: "
                     "P(new) > P(old) is P(subject) > P(the new answer's own subject).")
        parts += [Text(line, style="dim") for line in lines]
    return parts


def print_robustness_summary(rows: Sequence[dict], run: Path | str) -> None:
    for part in robustness_tables(rows, run):
        console.print(part, soft_wrap=isinstance(part, Text))
