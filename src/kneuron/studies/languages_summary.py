"""What the ``languages`` study shows, for the terminal summary and the report's section alike
(:mod:`kneuron.studies.languages`, :mod:`kneuron.studies.cross_lingual_edit`): each mean over facts with its stored
95% interval, n and paired p-value against the study's control, as text tables (a header and lines of cells).

Most of the study's figures are per language (the s × t suppression matrix, the neurons per language, the edit
measured in each language), which the default aggregates (one per variant and metric, pooling the languages) do
not give. :func:`language_aggregates` adds them, from the same rows: each row of a language version is also
counted under a metric that names its language, and the own-language and cross-language means pool a key's cells
(the fact, not the cell, is the unit: the cluster bootstrap over keys).

* ``neurons@l`` (variant ``kn``): knowledge neurons of the versions in language l;
* ``suppress@s>t`` (the suppression variants): the cell (s, t) of the matrix, over the keys;
* ``suppress_own`` / ``suppress_cross`` (fact id: the key): the s = t cells and the s ≠ t cells of each key;
* ``METRIC@l`` (the edit variants): an edit measure in language l.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from kneuron.facts.languages import LANGUAGE_NAMES, fact_key, language_of
from kneuron.studies.cross_lingual_edit import edit_summary
from kneuron.studies.display import stored_figure
from kneuron.studies.intervals import aggregate_rows
from kneuron.studies.languages import (
    STUDY,
    SUPPRESS_VARIANTS,
    neurons_per_language,
    overlap_summary,
    study_languages,
    suppression_matrix,
)

#: the edit variants and their labels
EDIT_LABELS = {"edit_kn": "English knowledge neurons, the paper's formula",
               "edit_kn_signed": "English knowledge neurons, sign of the activation",
               "edit_random": "random neurons (same layers), the paper's formula",
               "edit_random_signed": "random neurons, sign of the activation"}
#: the suppression variants and their labels
SUPPRESS_LABELS = {"kn": "all knowledge neurons of s", "random": "random neurons, same layers (control)",
                   "kn_shared": "those of s also found in another language", "kn_specific": "those of s only"}
#: the overlap figures: (metric, label, percent)
OVERLAP_FIGURES = (("languages", "languages per fact", False),
                   ("union", "knowledge neurons (union of its languages)", False),
                   ("shared_all", "shared by all its languages", False),
                   ("shared", "shared by at least two", False),
                   ("specific", "language-specific (one language only)", False),
                   ("share_shared_all", "share of the union shared by all", True),
                   ("share_shared", "share shared by 2+", True),
                   ("share_specific", "share language-specific", True))
#: the edit figures measured in each language: (metric, column)
EDIT_FIGURES = (("new_beats_old_before", "P(new) > P(old) before"), ("new_beats_old", "after"),
                ("success", "success (facts)"), ("top1_new", "top-1 = new"), ("changed", "change rate"),
                ("p_old_before", "p(old) before"), ("p_old_after", "p(old) after"),
                ("p_new_before", "p(new) before"), ("p_new_after", "p(new) after"))


def language_rows(rows: Sequence[dict]) -> list[dict]:
    """The per-language rows :func:`language_aggregates` aggregates (see the module docstring)."""
    out = []
    for r in rows:
        code, fact_id = language_of(r.get("fact_id") or ""), r.get("fact_id")
        if not code or not fact_id:
            continue
        variant, metric = r["variant"], r["metric"]
        if variant == "kn" and metric == "neurons":
            out.append({**r, "metric": f"neurons@{code}"})
        elif variant in SUPPRESS_VARIANTS and metric.startswith("suppress@"):
            target = metric.split("@", 1)[1]
            out.append({**r, "metric": f"suppress@{code}>{target}"})
            out.append({**r, "fact_id": fact_key(fact_id),
                        "metric": "suppress_own" if target == code else "suppress_cross"})
        elif variant.startswith("edit_"):
            out.append({**r, "metric": f"{metric}@{code}"})
    return out


def with_language_rows(rows: Sequence[dict]) -> list[dict]:
    """``rows`` and their :func:`language_rows`: what the bare means of an atlas studied before the per-language
    aggregates were stored are read from."""
    return [*rows, *language_rows(rows)]


def language_aggregates(rows: Sequence[dict], controls: Mapping[str, str]) -> list[dict]:
    """The per-language aggregates over all facts (relation ``""``: per relation they would be a handful of keys
    each), with the paired p against ``controls`` as for every aggregate."""
    return [a for a in aggregate_rows(language_rows(rows), controls) if a["relation"] == ""]


def language_name(code: str) -> str:
    """``fr (French)``."""
    return f"{code} ({LANGUAGE_NAMES[code]})" if code in LANGUAGE_NAMES else code


def overlap_lines(rows: Sequence[dict], aggregates: Sequence[dict]) -> list[list[str]]:
    """``[figure, mean [95% interval], n]`` of the overlap of a fact's neurons across its languages (no control)."""
    return [[label, stored_figure(aggregates, rows, STUDY, "overlap", metric, percent=percent, signed=False)]
            for metric, label, percent in OVERLAP_FIGURES]


def per_language_lines(rows: Sequence[dict], aggregates: Sequence[dict]) -> list[list[str]]:
    """``[language, knowledge neurons per fact, of them specific to it]``, each with its interval and n."""
    extended = with_language_rows(rows)
    return [[language_name(code),
             stored_figure(aggregates, extended, STUDY, "kn", f"neurons@{code}", percent=False, signed=False),
             stored_figure(aggregates, rows, STUDY, "overlap", f"specific@{code}", percent=False, signed=False)]
            for code in neurons_per_language(rows)]


def jaccard_lines(rows: Sequence[dict], aggregates: Sequence[dict]) -> list[list[str]]:
    """``[pair, mean Jaccard [95% interval], n]`` per language pair (no control)."""
    codes = study_languages(rows)
    pairs = sorted({tuple(r["metric"].split("|", 1)) for r in rows if r["variant"] == "jaccard" and r["fact_id"]},
                   key=lambda p: (codes.index(p[0]) if p[0] in codes else 99, codes.index(p[1]) if p[1] in codes
                                  else 99))
    return [[f"{a}–{b}", stored_figure(aggregates, rows, STUDY, "jaccard", f"{a}|{b}", percent=False, signed=False)]
            for a, b in pairs]


def matrix_lines(rows: Sequence[dict], aggregates: Sequence[dict], variant: str) -> list[list[str]]:
    """The s × t suppression matrix of ``variant``: ``[s, cell per t]``, each cell the mean Δp/p over the keys with
    its interval, n and (``kn``) the paired p against the random neurons; empty when the variant has no rows."""
    matrix = suppression_matrix(rows, variant)
    if not matrix:
        return []
    codes, extended = study_languages(rows), with_language_rows(rows)
    return [[s, *(stored_figure(aggregates, extended, STUDY, variant, f"suppress@{s}>{t}") if (s, t) in matrix
                  else "–" for t in codes)] for s in codes]


def own_cross_lines(rows: Sequence[dict], aggregates: Sequence[dict]) -> list[list[str]]:
    """``[neurons set to 0, own language (s = t), other languages (s ≠ t)]`` per suppression variant: each key's
    cells pooled, the mean over keys with its interval, n (keys) and paired p."""
    extended = with_language_rows(rows)
    return [[label, *(stored_figure(aggregates, extended, STUDY, variant, metric)
                      for metric in ("suppress_own", "suppress_cross"))]
            for variant, label in SUPPRESS_LABELS.items() if suppression_matrix(rows, variant)]


def edit_lines(rows: Sequence[dict], aggregates: Sequence[dict], variant: str) -> tuple[str, list[list[str]]]:
    """The edit of ``variant`` measured in each language: its heading (``… (3/4 edited)``) and
    ``[language, facts measured, cell per EDIT_FIGURES]``, each cell a mean over the facts measured there with its
    interval, n and (the knowledge-neuron edits) the paired p against the random-neuron edit; no lines when the
    variant has no rows."""
    summary = edit_summary(rows, variant)
    if not summary:
        return "", []
    english = summary.get("en", {})
    heading = (f"{EDIT_LABELS.get(variant, variant)} ({english.get('edited', 0):.0f}/"
               f"{english.get('attempted', 0):.0f} edited)")
    lines, extended = [], with_language_rows(rows)
    for code, entry in summary.items():
        lines.append([language_name(code), f"{entry['keys']:.0f}",
                      *(stored_figure(aggregates, extended, STUDY, variant, f"{metric}@{code}",
                                      percent=not metric.startswith("p_"), signed=False)
                        for metric, _ in EDIT_FIGURES)])
    return heading, lines


def n_keys(rows: Sequence[dict]) -> int:
    """How many facts (keys) the study covered: those with an overlap row."""
    return overlap_summary(rows).get("union", (math.nan, 0))[1]
