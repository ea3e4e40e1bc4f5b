"""``kneuron study beyond --run ATLAS``: the studies beyond the paper in one command, on one model load.

In order: ``vocabulary`` (what each knowledge neuron's value slot writes, Geva et al. 2022), ``interactions``
(neurons alone, in pairs, all together, and how many it takes), ``robustness`` (edits under Niu et al.'s tests:
symmetry, synonyms, held-out paraphrases, neighbourhood) and last ``consistency`` (Chen et al.'s consistency
across a fact's prompts; no model), which compares the other studies' figures on consistent and inconsistent facts
and so runs after them. ``--only`` picks some of them (e.g. ``--only consistency,vocabulary``, what ``make demo`` runs);
each is also ``kneuron study NAME`` on its own. Every study stores its rows in the atlas (results table) and
prints its summary; the line at the end says how long each took.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from rich.text import Text

from kneuron.cli.app import atlas_model, err_console, require_done_facts
from kneuron.errors import KneuronError

#: the studies, in the order they run (consistency last: it reads the others' rows)
BEYOND = ("vocabulary", "interactions", "robustness", "consistency")
#: the name each study's rows are stored under in the atlas's results table
STORED = {"vocabulary": "vocabulary", "interactions": "interactions", "robustness": "edit_robustness",
          "consistency": "consistency"}
#: the studies that need the model
NEEDS_MODEL = frozenset({"vocabulary", "interactions", "robustness"})


def beyond_names(only: str | None) -> list[str]:
    """The studies ``--only`` names (comma-separated; all of them when None), in their running order; an unknown
    name is refused in one line."""
    if only is None:
        return list(BEYOND)
    names = [name.strip().replace("-", "_") for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in BEYOND]
    if unknown or not names:
        raise KneuronError(f"--only {only!r}: choose among {', '.join(BEYOND)} (comma-separated).")
    return [name for name in BEYOND if name in names]


def beyond_study(run: Path, model: str | None, device: str, *, only: str | None = None, seed: int = 0,
                 cap: int = 8, max_k: int | None = None, tolerance: float = 0.02, lm=None) -> dict[str, list[dict]]:
    """Run the chosen studies on the atlas at ``run`` (loading the model once, only when one of them needs it;
    ``lm``: one the caller already loaded for this atlas, as ``kneuron study all --beyond`` does), store and print
    each, and return ``{study: rows}``."""
    from kneuron.store import Atlas

    names = beyond_names(only)
    with Atlas.open(run) as atlas:
        require_done_facts(atlas, run)
        if lm is None and NEEDS_MODEL & set(names):
            lm = atlas_model(atlas, model, device)
        steps: dict[str, Callable[[], list[dict]]] = {
            "vocabulary": lambda: _vocabulary(atlas, lm, run, seed),
            "interactions": lambda: _interactions(atlas, lm, run, seed, cap, max_k, tolerance),
            "robustness": lambda: _robustness(atlas, lm, run, seed),
            "consistency": lambda: _consistency(atlas, run),
        }
        results: dict[str, list[dict]] = {}
        spent: list[str] = []
        for name in names:
            err_console.print(Text(f"study {name}", style="bold"), highlight=False)
            start = time.perf_counter()
            results[name] = steps[name]()
            spent.append(f"{name} {time.perf_counter() - start:.1f} s")
    err_console.print(f"[dim]beyond: {', '.join(spent)}; stored in {run} (`kneuron report --run {run}`)[/dim]",
                      highlight=False)
    return results


def _vocabulary(atlas, lm, run: Path, seed: int) -> list[dict]:
    from kneuron.cli.vocabulary_study import print_vocabulary_summary, run_vocabulary_study

    rows, stored = run_vocabulary_study(atlas, lm, seed)
    print_vocabulary_summary(rows, stored, run)
    return rows


def _interactions(atlas, lm, run: Path, seed: int, cap: int, max_k: int | None, tolerance: float) -> list[dict]:
    from kneuron.cli.app import console
    from kneuron.cli.interactions_study import interactions_table, run_interactions_study

    rows, seconds = run_interactions_study(atlas, lm, seed=seed, cap=cap, max_k=max_k, tolerance=tolerance)
    console.print(interactions_table(rows, run, seconds))
    return rows


def _robustness(atlas, lm, run: Path, seed: int) -> list[dict]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kneuron.cli.robustness_study import print_robustness_summary
    from kneuron.studies.edit_robustness import run_edit_robustness

    with atlas.snapshot():
        total = len(atlas.facts())
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("edit robustness", total=total)
        rows, notes = run_edit_robustness(atlas, lm, seed=seed,
                                          on_fact=lambda n, _fact: progress.update(task, completed=n + 1))
    for note in notes:
        err_console.print(Text(f"note: {note}", style="yellow"), soft_wrap=True)
    print_robustness_summary(rows, run)
    return rows


def _consistency(atlas, run: Path) -> list[dict]:
    from kneuron.cli.consistency_study import print_consistency_summary
    from kneuron.studies.consistency import COMPARED_STUDIES, consistency_study

    rows = consistency_study(atlas)
    with atlas.snapshot():
        others = {study: atlas.results(study) for study in COMPARED_STUDIES}
    print_consistency_summary(rows, run, others)
    return rows
