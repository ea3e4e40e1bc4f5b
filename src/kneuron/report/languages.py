"""The report's Languages section: one fact's knowledge neurons across its languages (shared by all, by two or more,
language-specific; per layer), the s × t cross-lingual suppression matrix and the update through the English
neurons measured in every language, from the ``languages`` study's rows (:mod:`kneuron.studies.languages`,
:mod:`kneuron.studies.cross_lingual_edit`), next to what Chen et al. (AAAI 2024) report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kneuron.report import plots
from kneuron.report.parts import escape as _e
from kneuron.report.parts import image as _image
from kneuron.report.parts import table as _table
from kneuron.studies.languages import study_languages
from kneuron.studies.languages_summary import (
    EDIT_FIGURES,
    EDIT_LABELS,
    SUPPRESS_LABELS,
    edit_lines,
    jaccard_lines,
    language_name,
    matrix_lines,
    n_keys,
    overlap_lines,
    own_cross_lines,
    per_language_lines,
)

TITLE = "Languages"
#: below this many facts (keys) the section warns that its means are anecdotes
FEW_KEYS = 10
#: what ../shared/PAPER.md says of Chen et al. (the report quotes nothing beyond it)
PAPER = ("Chen et al. (AAAI 2024), on mBERT and mGPT with mLAMA, report language-independent knowledge neurons "
         "(shared by a fact across languages) and degenerate ones (several neuron sets that each suffice).")
#: what every table's cells are
CELLS = ("Each figure is a mean over facts with its 95% interval (bootstrap over facts; Wilson's for a share of "
         "facts), its n and, against the study's control (random neurons of the same layers), the paired p-value on "
         "the same facts, as the study stored them.")


def _cells(lines: Sequence[Sequence[str]]) -> list[list[str]]:
    return [[_e(cell) for cell in line] for line in lines]


def languages_section(rows: Sequence[dict], covered: Mapping[str, object] | None = None, done_facts: int = 0,
                      aggregates: Sequence[dict] = ()) -> str:
    """The section as an HTML fragment; empty when the atlas has no ``languages`` rows (most atlases have no
    multilingual facts). ``covered``: the facts the study covered (``Atlas.coverage()["languages"]``);
    ``aggregates``: the study's stored ones (with the per-language ones,
    :func:`~kneuron.studies.languages_summary.language_aggregates`), whose intervals, n and p each mean shows."""
    rows = list(rows)
    if not rows:
        return ""
    codes, keys = study_languages(rows), n_keys(rows)
    facts = covered.get("facts") if covered else None
    scope = f" ({facts} of the atlas's {done_facts} done facts)" if facts is not None and done_facts else ""
    parts = [f"<h2>{TITLE}</h2>",
             f'<p class="note">{keys} facts (keys) done in at least two languages{scope}: '
             f"{', '.join(map(_e, map(language_name, codes)))}. A fact's versions share the id before <code>@</code> "
             "(<code>capital:France@fr</code>); each version has its own prompts and answer and its own knowledge "
             f"neurons. {_e(PAPER)} {_e(CELLS)}</p>"]
    if keys < FEW_KEYS:
        parts.append(f'<div class="warn"><b>Only {keys} fact(s).</b> Every mean below is over {keys} or fewer '
                     "facts (n is shown everywhere): read them as examples, not as findings.</div>")
    parts.append("<h3>Shared and language-specific neurons</h3>")
    parts.append(_table(["per fact", "mean [95% interval], n"], _cells(overlap_lines(rows, aggregates))))
    parts.append(_table(["language", "knowledge neurons per fact", "of them specific to it"],
                        _cells(per_language_lines(rows, aggregates))))
    parts.append("<h3>Jaccard of the neuron sets, per language pair</h3>"
                 + _table(["pair", "mean Jaccard [95% interval], n"], _cells(jaccard_lines(rows, aggregates)))
                 + '<p class="note">|N(a) ∩ N(b)| / |N(a) ∪ N(b)| per fact, averaged over the facts with both '
                   "languages (a fact where both sets are empty is left out).</p>")
    parts.append(_image(plots.language_layers_figure(rows, aggregates),
                        "shared and language-specific neurons per layer"))
    parts.append('<p class="note">A neuron counts once per fact: "shared by at least two" includes "shared by all".'
                 "</p>")
    parts.append(_suppression(rows, codes, aggregates))
    parts.append(_edits(rows, aggregates))
    return "".join(parts)


def _suppression(rows: Sequence[dict], codes: Sequence[str], aggregates: Sequence[dict]) -> str:
    parts = ["<h3>Cross-lingual suppression</h3>",
             '<p class="note">The knowledge neurons of a fact\'s version in language s are set to 0 at the answer '
             "position, and the correct answer's probability is measured in each language t of the fact, on t's "
             "own prompts with t's own answer: mean over t's prompts of (p<sub>after</sub> − p<sub>before</sub>) / "
             "p<sub>before</sub>, then over facts (n). s = t is the own-language suppression of the suppress / "
             "amplify study. The control sets as many random neurons of the same layers (none a knowledge neuron "
             "of any of the fact's languages; seeded). Own and other languages: each fact's cells pooled, the mean "
             "over facts (n = facts).</p>",
             _image(plots.suppression_matrix_figure(rows, aggregates), "suppression matrix, languages s × t"),
             _table(["neurons set to 0", "own language (s = t)", "other languages (s ≠ t)"],
                    _cells(own_cross_lines(rows, aggregates)))]
    for variant, label in SUPPRESS_LABELS.items():
        lines = matrix_lines(rows, aggregates, variant)
        if lines:
            parts.append(f"<h4>{_e(label.capitalize())}</h4>" + _table(["s \\ t", *codes], _cells(lines)))
    return "".join(parts)


def _edits(rows: Sequence[dict], aggregates: Sequence[dict]) -> str:
    tables = []
    for variant in EDIT_LABELS:
        heading, lines = edit_lines(rows, aggregates, variant)
        if lines:
            tables.append(f"<h4>{_e(heading)}</h4>"
                          + _table(["measured in", "facts", *(c for _, c in EDIT_FIGURES)], _cells(lines)))
    if not tables:
        return ""
    return ("<h3>Cross-lingual edit</h3>"
            '<p class="note">Each fact is updated through the knowledge neurons of its English version (the editing '
            "study's update: each value slot moves by −e(old) + 8·e(new), e = the English answers' first-token output "
            "embeddings; neurons of more than 10% of the relation's facts left out, a fact's language versions "
            "counting once) to the answer of another fact of its relation (seeded), e.g. capital:France → "
            "capital:Italy. Each language t is then measured with its own forms: the fact's answer in t against the "
            "other fact's answer in t (Italy's capital is \"Rom\" in German). The model is restored bit-exactly after "
            "each edit.</p>"
            + "".join(tables)
            + '<p class="note"><b>facts</b>: measured in that language (the other fact has a version there). '
              "<b>P(new) &gt; P(old)</b>: share of the prompts; <b>success</b>: share of facts where it holds on most "
              "prompts; <b>top-1 = new</b>: share of prompts whose top token is the new answer's first; <b>change "
              "rate</b>: of the prompts answered right before, the share that no longer are. <i>Sign of the "
              "activation</i>: each delta times the sign of the neuron's mean activation on the English prompts "
              "(gated FFNs). The knowledge-neuron edits' p: paired against the same edit through random neurons.</p>")
