"""``languages``: one fact's knowledge neurons across its languages (:mod:`kneuron.studies.languages`,
:mod:`kneuron.studies.cross_lingual_edit`): neurons shared by all languages or specific to one, their layers,
suppressing one language's neurons measured in every language, and an update through the English neurons measured
in every language. ``study all`` runs it when the atlas has a fact done in two languages (ids such as
``capital:France@fr``, e.g. ``kneuron run --facts multilingual``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.table import Table
from rich.text import Text

from kneuron.facts.multilingual import multilingual_facts
from kneuron.studies.base import SEED, Study, StudyContext, StudyOutput
from kneuron.studies.cross_lingual_edit import cross_lingual_edit
from kneuron.studies.display import fit_table
from kneuron.studies.languages import language_study, multilingual_keys, multilingual_refusal
from kneuron.studies.registry import register_study


@register_study
class Languages(Study):
    """One fact's knowledge neurons across its languages: shared or language-specific, suppression across
    languages, an update through the English neurons measured in every language.

    Controls: suppressing the knowledge neurons (``kn``) against as many random neurons of the same layers
    (``random``; the shared and language-specific subsets have none, as the random set is sized to all of the
    fact's neurons), and the update through them against the same update
    through random neurons (``edit_kn`` vs ``edit_random``, ``edit_kn_signed`` vs ``edit_random_signed``). The
    overlap and Jaccard between languages have no control."""

    name = "languages"
    title = "Knowledge neurons across languages"
    group = "beyond"
    in_all = True
    changes_weights = True
    controls = {"kn": "random", "edit_kn": "edit_random",
                "edit_kn_signed": "edit_random_signed"}
    options = (SEED,)

    def applies(self, context: StudyContext) -> str | None:
        why = multilingual_refusal(context.facts)
        return f"{context.run_path} cannot be studied across languages: {why}" if why else None

    def run(self, context: StudyContext) -> StudyOutput:
        facts, neurons, seed = context.facts, context.atlas.all_refined(), context.options["seed"]
        # the edit targets and their forms in each language: the built-in multilingual set, then the atlas's own
        # facts (also those the model does not know), which take precedence where an id is in both
        pool = [*multilingual_facts(), *context.atlas.facts(status=("done", "dropped"))]
        keys = multilingual_keys(facts)
        advance = context.progress("languages: suppress", len(keys))
        rows = language_study(context.lm, facts, neurons, seed=seed, on_key=lambda _key: advance())
        advance = context.progress("languages: edit", len(keys))
        rows += cross_lingual_edit(context.lm, keys, neurons, pool=pool, counted=facts, seed=seed,
                                   on_key=lambda _key: advance())
        covered = [fact.id for versions in keys.values() for fact in versions.values()]
        return StudyOutput(rows, facts=covered)

    def aggregates(self, output: StudyOutput, context: StudyContext) -> list[dict]:
        """Every per-fact measure's aggregates, and the per-language ones the summaries show (the matrix cells,
        own and other languages, neurons and the edit per language: :func:`~kneuron.studies.languages_summary.
        language_aggregates`)."""
        from kneuron.studies.languages_summary import language_aggregates

        return super().aggregates(output, context) + language_aggregates(output.rows, self.controls)

    def measures(self, rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str]]:
        return []

    def summary(self, output: StudyOutput, context: StudyContext) -> list:
        return language_tables(output.rows, context.run_path, output.aggregates, context.width)


#: below this many keys the summary says the numbers are anecdotes
FEW_KEYS = 10
#: what every table's cells are
CAPTION = ("means over facts [95% interval: bootstrap over facts; Wilson's for a share of facts], n facts, paired p "
           "against the control")


def language_tables(rows: Sequence[dict], run: Path | str, aggregates: Sequence[dict] = (),
                    width: int | None = None) -> list[Table | Text]:
    """The summary as title lines, tables and notes: each mean over facts with its stored interval, n and paired p
    (:mod:`kneuron.studies.languages_summary`, the report's too); one figure per line on a terminal too narrow for
    a table (``width``; None: any width, as in a pipe)."""
    from kneuron.studies.languages import study_languages
    from kneuron.studies.languages_summary import (
        EDIT_FIGURES,
        SUPPRESS_LABELS,
        edit_lines,
        jaccard_lines,
        matrix_lines,
        n_keys,
        overlap_lines,
        own_cross_lines,
        per_language_lines,
    )

    codes, keys = study_languages(rows), n_keys(rows)
    parts: list[Table | Text] = [Text(f"Knowledge neurons across languages: {keys} fact(s) done in 2+ languages "
                                      f"({', '.join(codes)}), stored in {run}", style="bold")]
    if keys < FEW_KEYS:
        parts.append(Text(f"only {keys} fact(s): read every mean below as n = {keys} or fewer, not as a finding",
                          style="yellow"))
    parts.append(fit_table("Overlap of one fact's neurons across its languages", ["per fact", "mean [95%], n"],
                           overlap_lines(rows, aggregates), width))
    parts.append(fit_table("Per language", ["language", "neurons / fact", "specific / fact"],
                           per_language_lines(rows, aggregates), width))
    parts.append(fit_table("Jaccard of the neuron sets per language pair", ["pair", "mean Jaccard [95%], n"],
                           jaccard_lines(rows, aggregates), width,
                           caption="n = facts with both languages; a pair whose two sets are empty is left out"))
    parts.append(fit_table("Suppress: own language and other languages", ["neurons set to 0", "own (s = t)",
                                                                          "other (s ≠ t)"],
                           own_cross_lines(rows, aggregates), width,
                           caption="a fact's cells pooled, n = facts; " + CAPTION))
    for variant in ("kn", "random"):
        lines = matrix_lines(rows, aggregates, variant)
        if lines:
            parts.append(fit_table(f"Suppress {SUPPRESS_LABELS[variant]}: mean Δp/p of the answer in language t, "
                                   "on t's prompts", ["s \\ t", *codes], lines, width))
    for variant in ("edit_kn", "edit_kn_signed", "edit_random", "edit_random_signed"):
        heading, lines = edit_lines(rows, aggregates, variant)
        if lines:
            parts.append(fit_table(f"Update through the {heading}, measured in every language with that "
                                   "language's forms", ["language", "facts", *(c for _, c in EDIT_FIGURES)],
                                   lines, width))
    parts.append(Text(CAPTION + "; facts: measured in that language (the target has a version there); "
                      "P(new)>P(old): share of prompts; success: share of facts where it holds on most prompts; "
                      "top-1 = new: share of prompts; change rate: of the prompts answered right before, the share "
                      "no longer; signed: each delta times the sign of the neuron's activation on the English "
                      "prompts", style="dim"))
    return parts
