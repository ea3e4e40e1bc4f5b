"""``languages``: one fact's knowledge neurons across its languages (:mod:`kneuron.studies.languages`,
:mod:`kneuron.studies.cross_lingual_edit`): neurons shared by all languages or specific to one, their layers,
suppressing one language's neurons measured in every language, and an update through the English neurons measured
in every language. ``study all`` runs it when the atlas has a fact done in two languages (ids such as
``capital:France@fr``, e.g. ``kneuron run --facts multilingual``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table
from rich.text import Text

from kneuron.facts.multilingual import multilingual_facts
from kneuron.studies.base import SEED, Study, StudyContext, StudyOutput
from kneuron.studies.base import number as _num
from kneuron.studies.cross_lingual_edit import cross_lingual_edit
from kneuron.studies.languages import language_study, multilingual_keys, multilingual_refusal
from kneuron.studies.registry import register_study


def _moved(summary: dict, metric: str) -> str:
    before, after = summary.get(f"{metric}_before", math.nan), summary.get(f"{metric}_after", math.nan)
    return f"{_num(before, '.3g')}→{_num(after, '.3g')}"


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

    def measures(self, rows: Sequence[dict], aggregates: Sequence[dict] = ()) -> list[tuple[str, str]]:
        return []

    def summary(self, output: StudyOutput, context: StudyContext) -> list:
        return language_tables(output.rows, context.run_path)


#: below this many keys the summary says the numbers are anecdotes
FEW_KEYS = 10


def _titled(title: str, table: Table, note: str = "") -> list[Table | Text]:
    parts: list[Table | Text] = [Text(""), Text(title, style="bold"), table]
    return parts + [Text(note, style="dim")] if note else parts


def language_tables(rows: Sequence[dict], run: Path | str) -> list[Table | Text]:
    """The summary as title lines, tables and notes (see :func:`print_language_summary`)."""
    from kneuron.facts.languages import LANGUAGE_NAMES
    from kneuron.studies.cross_lingual_edit import edit_summary
    from kneuron.studies.languages import (
        jaccard_summary,
        neurons_per_language,
        overlap_summary,
        own_and_cross,
        study_languages,
        suppression_matrix,
    )

    codes = study_languages(rows)
    overlap = overlap_summary(rows)
    n_keys = overlap.get("union", (math.nan, 0))[1]
    parts: list[Table | Text] = [Text(f"Knowledge neurons across languages: {n_keys} fact(s) done in 2+ languages "
                                      f"({', '.join(codes)}), stored in {run}", style="bold")]
    if n_keys < FEW_KEYS:
        parts.append(Text(f"only {n_keys} fact(s): read every mean below as n = {n_keys} or fewer, not as a finding",
                          style="yellow"))
    head = Table(show_edge=False)
    for column in ("per fact", "mean", "n"):
        head.add_column(column, justify="left" if column == "per fact" else "right")
    for metric, label, spec in (("languages", "languages", ".2f"), ("union", "neurons (union of its languages)", ".2f"),
                                ("shared_all", "shared by all its languages", ".2f"),
                                ("shared", "shared by at least two", ".2f"), ("specific", "language-specific", ".2f"),
                                ("share_shared_all", "share shared by all", ".1%"),
                                ("share_shared", "share shared by 2+", ".1%"),
                                ("share_specific", "share language-specific", ".1%")):
        mean, n = overlap.get(metric, (math.nan, 0))
        head.add_row(label, _num(mean, spec), str(n))
    parts += _titled("Overlap of one fact's neurons across its languages (means over facts)", head)

    per = Table(show_edge=False)
    for column in ("language", "facts", "neurons / fact", "specific / fact"):
        per.add_column(column, justify="left" if column == "language" else "right")
    for code, (mean, n) in neurons_per_language(rows).items():
        specific = overlap.get(f"specific@{code}", (math.nan, 0))[0]
        per.add_row(f"{code} {LANGUAGE_NAMES.get(code, '')}".strip(), str(n), _num(mean, ".2f"), _num(specific, ".2f"))
    parts += _titled("Per language", per)

    pairs = Table(show_edge=False)
    for column in ("pair", "mean Jaccard", "n"):
        pairs.add_column(column, justify="left" if column == "pair" else "right")
    for (a, b), (mean, n) in sorted(jaccard_summary(rows).items(),
                                    key=lambda item: (codes.index(item[0][0]), codes.index(item[0][1]))):
        pairs.add_row(f"{a}–{b}", _num(mean, ".3f"), str(n))
    parts += _titled("Jaccard of the neuron sets per language pair", pairs,
                     "n = facts with both languages; a pair whose two sets are empty is left out")

    for variant, label in (("kn", "the knowledge neurons of language s"),
                           ("random", "as many random neurons of the same layers (control)")):
        matrix = suppression_matrix(rows, variant)
        grid = Table(show_edge=False)
        grid.add_column("s \\ t")
        for target in codes:
            grid.add_column(target, justify="right")
        for source in codes:
            grid.add_row(source, *(Text(f"{_num(matrix[source, t][0], '+.1%')} (n={matrix[source, t][1]})")
                                   if (source, t) in matrix else "–" for t in codes))
        (own, n_own), (cross, n_cross) = own_and_cross(matrix)
        parts += _titled(f"Suppress {label}: mean Δp/p of the answer in language t, on t's prompts", grid,
                         f"own language (s = t): {_num(own, '+.1%')} (n={n_own}); other languages (s ≠ t): "
                         f"{_num(cross, '+.1%')} (n={n_cross})")

    edits = Table(show_edge=False)
    for column in ("edit", "language", "facts", "P(new)>P(old) before", "after", "success", "top-1 = new",
                   "change rate", "p(old) before→after", "p(new) before→after"):
        edits.add_column(column, justify="left" if column in ("edit", "language") else "right")
    for variant in ("edit_kn", "edit_kn_signed", "edit_random", "edit_random_signed"):
        summary = edit_summary(rows, variant)
        if not summary:
            continue
        english = summary.get("en", {})
        name = (f"{variant.removeprefix('edit_')} ({english.get('edited', 0):.0f}/"
                f"{english.get('attempted', 0):.0f} edited)")
        for code, entry in summary.items():
            shares = [_num(entry.get(metric, math.nan), ".1%")
                      for metric in ("new_beats_old_before", "new_beats_old", "success", "top1_new", "changed")]
            edits.add_row(name, code, f"{entry['keys']:.0f}", *shares, _moved(entry, "p_old"), _moved(entry, "p_new"))
            name = ""
    parts += _titled("Update through the English neurons to another fact's answer, measured in every language with "
                     "that language's forms", edits,
                     "facts: measured in that language (the target has a version there); P(new)>P(old): share of "
                     "prompts; success: share of facts where it holds on most prompts; top-1 = new: share of prompts; "
                     "change rate: of the prompts answered right before, the share no longer; signed: each delta "
                     "times the sign of the neuron's activation on the English prompts")
    return parts
