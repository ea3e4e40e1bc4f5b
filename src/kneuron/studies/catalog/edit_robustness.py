"""``edit_robustness``: edits under Niu et al.'s tests (ICLR 2024; :mod:`kneuron.studies.edit_robustness`): each
fact is updated through its knowledge neurons and measured on the reversed relation (one-to-one relations), on its
subject's aliases, on paraphrases held out when the neurons are refined again from the stored coarse sets, and on
other subjects of the relation (CounterFact's neighbourhood), with probability and top-1 side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.table import Table
from rich.text import Text

from kneuron.facts.robustness import robustness_data
from kneuron.studies.base import SEED, Option, Study, StudyContext, StudyOutput
from kneuron.studies.display import fit_table
from kneuron.studies.edit_robustness import coverage_notes, edit_robustness_study, study_pool
from kneuron.studies.edit_robustness_summary import (
    SET_MEASURES,
    detail_figures,
    robustness_summary,
    robustness_variants,
    set_figures,
)
from kneuron.studies.registry import register_study

#: the update settings the study runs: (scale, sign) of :func:`~kneuron.interventions.update_fact`
SETTINGS = (("absolute", "none"), ("absolute", "activation"))


@register_study
class EditRobustness(Study):
    """Edits through knowledge neurons under Niu et al.'s tests: reversed relation, aliases, held-out
    paraphrases, neighbourhood; probability and top-1 side by side.

    No control: every measure is the knowledge-neuron edit's own before/after on the tests' prompts (the
    random-neuron edit is the ``editing`` study's control), so its aggregates carry n and an interval only."""

    name = "edit_robustness"
    title = "Edit robustness"
    group = "beyond"
    aliases = ("robustness",)
    changes_weights = True
    options = (SEED,
               Option("held_out", int, 2, "Templates held out per fact (its neurons are refined again without them).",
                      min=0),
               Option("n_neighbours", int, 10, "Other facts of the relation measured per edit.", min=0,
                      flag="--neighbours"),
               Option("known_only", bool, False, "Draw new answers and neighbours from the built-in facts the model "
                      "knows only (a pass over every built-in prompt of the relations).", stored=False))

    def run(self, context: StudyContext) -> StudyOutput:
        options, facts = context.options, context.facts
        pool, owners = study_pool(context.lm, facts, options["known_only"])
        data = robustness_data()
        notes = coverage_notes(facts, data, context.coarse)
        advance = context.progress("edit robustness", len(facts))
        rows = edit_robustness_study(context.lm, facts, context.atlas.all_refined(), coarse_by_fact=context.coarse,
                                     share=context.atlas.params.get("share", "adaptive"), pool=pool,
                                     owners_from=owners, data=data, settings=SETTINGS,
                                     held_out=options["held_out"], n_neighbours=options["n_neighbours"],
                                     seed=options["seed"], on_fact=lambda _n, _fact: advance())
        return StudyOutput(rows, notes=notes)

    def measures(self, rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str]]:
        return []

    def summary(self, output: StudyOutput, context: StudyContext) -> list:
        return robustness_tables(output.rows, context.run_path, output.aggregates, context.width)


def robustness_tables(rows: Sequence[dict], run: Path | str, aggregates: Sequence[dict] = (),
                      width: int | None = None) -> list[Table | Text]:
    """Per variant: one table of the prompt sets (P(new) > P(old), top-1 = new, P(new) rose, top-1 became new) and
    one of the other tests (the old reverse fact, the neighbourhood, the recomputed refined sets), each mean over
    facts with its stored interval and n (:func:`~kneuron.studies.edit_robustness_summary.set_figures`); one
    measure per line on a terminal too narrow for the table (``width``; None: any width, as in a pipe)."""
    parts: list[Table | Text] = []
    for variant in robustness_variants(rows):
        s = robustness_summary(rows, variant)
        title = f"Edit robustness ({variant}): {s['edited']:.0f} of {s['facts']:.0f} facts updated, stored in {run}"
        parts.append(fit_table(title, ["prompt set", *(column for column, *_ in SET_MEASURES)],
                               set_figures(rows, variant, aggregates), width))
        details = detail_figures(rows, variant, aggregates)
        if details:
            parts.append(fit_table(f"Edit robustness ({variant}): the other tests", ["measure", "mean [95%], n"],
                                   [list(line) for line in details], width))
        parts.append(Text("means over facts [95% interval: bootstrap over facts; Wilson's for a share of facts], n "
                          "facts (no control: the random-neuron edit is the editing study's); kept / held-out "
                          "paraphrases: the update goes through the neurons refined again from the kept "
                          "prompts only; 'held-out, all-prompt neurons' is the ordinary update on the same held-out "
                          "prompts. P(new) rose: the new answer's first token (the one top-1 is about); reverse: "
                          "P(new) > P(old) is P(subject) > P(the new answer's own subject).", style="dim"))
    return parts
