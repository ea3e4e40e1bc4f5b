"""The report's Languages section: one fact's knowledge neurons across its languages (shared by all, by two or more,
language-specific; per layer), the s × t cross-lingual suppression matrix and the update through the English
neurons measured in every language, from the ``languages`` study's rows (:mod:`kneuron.studies.languages`,
:mod:`kneuron.studies.cross_lingual_edit`), next to what Chen et al. (AAAI 2024) report."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from kneuron.facts.languages import LANGUAGE_NAMES
from kneuron.report import plots
from kneuron.report.parts import escape as _e
from kneuron.report.parts import image as _image
from kneuron.report.parts import number as _num
from kneuron.report.parts import table as _table
from kneuron.studies.cross_lingual_edit import edit_summary
from kneuron.studies.languages import (
    jaccard_summary,
    neurons_per_language,
    overlap_summary,
    own_and_cross,
    study_languages,
    suppression_matrix,
)

TITLE = "Languages"
#: below this many facts (keys) the section warns that its means are anecdotes
FEW_KEYS = 10
#: what ../shared/PAPER.md says of Chen et al. (the report quotes nothing beyond it)
PAPER = ("Chen et al. (AAAI 2024), on mBERT and mGPT with mLAMA, report language-independent knowledge neurons "
         "(shared by a fact across languages) and degenerate ones (several neuron sets that each suffice).")
SUPPRESS_LABELS = {"kn": "all knowledge neurons of s", "random": "random neurons, same layers (control)",
                   "kn_shared": "those of s also found in another language", "kn_specific": "those of s only"}
EDIT_LABELS = {"edit_kn": "English knowledge neurons, the paper's formula",
               "edit_kn_signed": "English knowledge neurons, sign of the activation",
               "edit_random": "random neurons (same layers), the paper's formula",
               "edit_random_signed": "random neurons, sign of the activation"}


def _pct(value: float, signed: bool = True) -> str:
    if not math.isfinite(value):
        return "–"
    if not signed:
        return f"{value:.1%}"
    return f'<span class="{"neg" if value < 0 else "pos"}">{value:+.1%}</span>'


def _moved(entry: Mapping[str, float], metric: str) -> str:
    before, after = entry.get(f"{metric}_before", math.nan), entry.get(f"{metric}_after", math.nan)
    return f"{_num(before, '.3g')} → {_num(after, '.3g')}"


def _name(code: str) -> str:
    return f"{code} ({LANGUAGE_NAMES[code]})" if code in LANGUAGE_NAMES else code


def languages_section(rows: Sequence[dict], covered: Mapping[str, object] | None = None, done_facts: int = 0) -> str:
    """The section as an HTML fragment; empty when the atlas has no ``languages`` rows (most atlases have no
    multilingual facts). ``covered``: the facts the study covered (``Atlas.coverage()["languages"]``)."""
    rows = list(rows)
    if not rows:
        return ""
    codes = study_languages(rows)
    overlap = overlap_summary(rows)
    n_keys = overlap.get("union", (math.nan, 0))[1]
    facts = covered.get("facts") if covered else None
    scope = f" ({facts} of the atlas's {done_facts} done facts)" if facts is not None and done_facts else ""
    parts = [f"<h2>{TITLE}</h2>",
             f'<p class="note">{n_keys} facts (keys) done in at least two languages{scope}: '
             f"{', '.join(map(_e, map(_name, codes)))}. A fact's versions share the id before <code>@</code> "
             "(<code>capital:France@fr</code>); each version has its own prompts and answer and its own knowledge "
             f"neurons. {_e(PAPER)}</p>"]
    if n_keys < FEW_KEYS:
        parts.append(f'<div class="warn"><b>Only {n_keys} fact(s).</b> Every mean below is over {n_keys} or fewer '
                     "facts (n is shown everywhere): read them as examples, not as findings.</div>")
    parts.append("<h3>Shared and language-specific neurons</h3>")
    table = []
    for metric, label, spec in (("languages", "languages per fact", ".2f"),
                                ("union", "knowledge neurons (union of its languages)", ".2f"),
                                ("shared_all", "shared by all its languages", ".2f"),
                                ("shared", "shared by at least two", ".2f"),
                                ("specific", "language-specific (one language only)", ".2f")):
        mean, n = overlap.get(metric, (math.nan, 0))
        share = overlap.get(f"share_{metric}", (math.nan, 0))[0] if metric not in ("languages", "union") else math.nan
        table.append([_e(label), _num(mean, spec), _pct(share, False), str(n)])
    parts.append(_table(["per fact", "mean count", "mean share of the union", "n (facts)"], table))
    per = [[_e(_name(code)), str(n), _num(mean, ".2f"), _num(overlap.get(f"specific@{code}", (math.nan, 0))[0], ".2f")]
           for code, (mean, n) in neurons_per_language(rows).items()]
    parts.append(_table(["language", "facts", "knowledge neurons per fact", "of them specific to it"], per))
    pairs = jaccard_summary(rows)
    grid = [[_e(a)] + [("" if a == b else
                        f"{_num(pairs.get((a, b), pairs.get((b, a), (math.nan, 0)))[0], '.2f')} "
                        f"<span class=\"note\">n={pairs.get((a, b), pairs.get((b, a), (math.nan, 0)))[1]}</span>")
                       for b in codes] for a in codes]
    parts.append("<h3>Jaccard of the neuron sets, per language pair</h3>"
                 + _table(["", *codes], grid)
                 + '<p class="note">|N(a) ∩ N(b)| / |N(a) ∪ N(b)| per fact, averaged over the facts with both '
                   "languages (a fact where both sets are empty is left out).</p>")
    parts.append(_image(plots.language_layers_figure(rows), "shared and language-specific neurons per layer"))
    parts.append('<p class="note">A neuron counts once per fact: "shared by at least two" includes "shared by all".'
                 "</p>")
    parts.append(_suppression(rows, codes))
    parts.append(_edits(rows))
    return "".join(parts)


def _suppression(rows: Sequence[dict], codes: Sequence[str]) -> str:
    parts = ["<h3>Cross-lingual suppression</h3>",
             '<p class="note">The knowledge neurons of a fact\'s version in language s are set to 0 at the answer '
             "position, and the correct answer's probability is measured in each language t of the fact, on t's "
             "own prompts with t's own answer: mean over t's prompts of (p<sub>after</sub> − p<sub>before</sub>) / "
             "p<sub>before</sub>, then over facts (n). s = t is the own-language suppression of the suppress / "
             "amplify study. The control sets as many random neurons of the same layers (none a knowledge neuron "
             "of any of the fact's languages; seeded).</p>",
             _image(plots.suppression_matrix_figure(rows), "suppression matrix, languages s × t")]
    summary = []
    for variant, label in SUPPRESS_LABELS.items():
        matrix = suppression_matrix(rows, variant)
        if not matrix:
            continue
        (own, n_own), (cross, n_cross) = own_and_cross(matrix)
        summary.append([_e(label), f"{_pct(own)} <span class=\"note\">n={n_own}</span>",
                        f"{_pct(cross)} <span class=\"note\">n={n_cross}</span>"])
        grid = [[_e(s)] + [f"{_pct(matrix[s, t][0])} <span class=\"note\">n={matrix[s, t][1]}</span>"
                           if (s, t) in matrix else "–" for t in codes] for s in codes]
        parts.append(f"<h4>{_e(label.capitalize())}</h4>" + _table(["s \\ t", *codes], grid))
    parts.insert(3, _table(["neurons set to 0", "own language (s = t)", "other languages (s ≠ t)"], summary))
    return "".join(parts)


def _edits(rows: Sequence[dict]) -> str:
    table = []
    for variant, label in EDIT_LABELS.items():
        summary = edit_summary(rows, variant)
        if not summary:
            continue
        english = summary.get("en", {})
        name = f"{_e(label)} ({english.get('edited', 0):.0f}/{english.get('attempted', 0):.0f} edited)"
        for code, entry in summary.items():
            shares = [_pct(entry.get(metric, math.nan), False)
                      for metric in ("new_beats_old_before", "new_beats_old", "success", "top1_new", "changed")]
            table.append([name, _e(_name(code)), f"{entry['keys']:.0f}", *shares, _moved(entry, "p_old"),
                          _moved(entry, "p_new")])
            name = ""
    if not table:
        return ""
    return ("<h3>Cross-lingual edit</h3>"
            '<p class="note">Each fact is updated through the knowledge neurons of its English version (the editing '
            "study's update: each value slot moves by −e(old) + 8·e(new), e = the English answers' first-token output "
            "embeddings; neurons of more than 10% of the relation's facts left out, a fact's language versions "
            "counting once) to the answer of another fact of its relation (seeded), e.g. capital:France → "
            "capital:Italy. Each language t is then measured with its own forms: the fact's answer in t against the "
            "other fact's answer in t (Italy's capital is \"Rom\" in German). The model is restored bit-exactly after "
            "each edit.</p>"
            + _table(["edit", "measured in", "facts", "P(new) > P(old) before", "after", "success (facts)",
                      "top-1 = new", "change rate", "p(old) before → after", "p(new) before → after"], table, left=2)
            + '<p class="note"><b>facts</b>: measured in that language (the other fact has a version there). '
              "<b>P(new) &gt; P(old)</b>: share of the prompts; <b>success</b>: share of facts where it holds on most "
              "prompts; <b>top-1 = new</b>: share of prompts whose top token is the new answer's first; <b>change "
              "rate</b>: of the prompts answered right before, the share that no longer are. <i>Sign of the "
              "activation</i>: each delta times the sign of the neuron's mean activation on the English prompts "
              "(gated FFNs).</p>")
