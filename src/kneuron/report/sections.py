"""The report's sections, one per registered study, in the registry's order.

A study's section is the function registered for its name with :func:`report_section` (the built-in ones in
:mod:`kneuron.report.paper_sections` and :mod:`kneuron.report.html`); a study without one still gets a section:
its title, what it measures, and the mean of each of its measures over the facts (:func:`default_section`). So a
new study is in the report as soon as it is registered, and a custom section is one function more.

Every section ends with the study's stored aggregates (:func:`stored_means`): each mean over facts, overall and
per relation, with its 95% interval, n and paired p against its control, as ``kneuron study`` stored them (read,
not recomputed); an atlas studied before they were stored says what to re-run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kneuron.report.parts import escape, number, table
from kneuron.studies.base import Study, means_by_measure
from kneuron.studies.intervals import figure, find, format_interval
from kneuron.studies.registry import registered_studies

#: study name -> its section (``ReportData -> HTML``)
SECTIONS: dict[str, Callable[[Any], str]] = {}


def report_section(study: str) -> Callable[[Callable[[Any], str]], Callable[[Any], str]]:
    """Register the decorated ``ReportData -> HTML`` function as the section of ``study``."""

    def register(render: Callable[[Any], str]) -> Callable[[Any], str]:
        SECTIONS[study] = render
        return render

    return register


def default_section(study: Study, rows: list[dict], aggregates: Sequence[dict] = ()) -> str:
    """A study's rows as a section: its title, what it measures and a table of each measure's mean, with its
    stored interval where one was stored (nothing when the atlas has no rows of it)."""
    if not rows:
        return ""
    means = means_by_measure(rows)
    body = table(["variant", "measure", "mean", "n", "mean [95% interval], n, p (stored)"],
                 [[escape(variant), escape(metric), number(mean, ".4g"), str(n),
                   escape(figure(aggregates, variant, metric, rows=rows, study=study.name))]
                  for variant, metric, mean, n in means], left=2)
    return (f'<h2 id="study-{escape(study.name)}">{escape(study.title or study.name)}</h2>'
            f'<p class="note">{escape(study.summary_line)} Rows stored under <code>{escape(study.name)}</code>; means '
            "over its rows of each variant and measure.</p>" + body)


#: the stored aggregates a section lists at most (overall ones first)
MAX_STORED = 400


def stored_means(study: str, rows: Sequence[dict], aggregates: Sequence[dict]) -> str:
    """A study's stored aggregates as a folded table (overall, then per relation): ``−81.6% [−88.0, −74.1],
    n = 32, p = 0.0001 vs random``; for rows without stored aggregates, a note saying what to re-run; nothing
    when the study has no per-fact rows."""
    if not aggregates:
        if not any(r.get("fact_id") and r.get("variant") != "params" for r in rows):
            return ""
        return (f'<p class="note">No intervals stored for <code>{escape(study)}</code> (studied by an older '
                f"kneuron): its means are shown without them; re-run <code>kneuron study "
                f"{escape(study.replace('_', '-'))}</code> to store them.</p>")
    ordered = sorted(aggregates, key=lambda a: (a["relation"] != "", a["relation"]))[:MAX_STORED]
    cells = [[escape(a["variant"]), escape(a["metric"]), escape(a["relation"] or "all facts"),
              escape(format_interval(find([a], a["variant"], a["metric"], a["relation"]))),
              escape(a["control"] or "–")] for a in ordered]
    more = (f'<p class="note">The first {MAX_STORED} of {len(aggregates)}.</p>'
            if len(aggregates) > MAX_STORED else "")
    return (f"<details><summary>Every stored mean of <code>{escape(study)}</code> with its 95% interval, n and "
            "paired p against its control</summary>"
            + table(["variant", "measure", "relation", "mean [95% interval], n, p", "control"], cells, left=3)
            + more + "</details>")


def render_sections(data: Any) -> str:
    """Every registered study's section, in the registry's order, each followed by its stored aggregates."""
    parts = []
    for study in registered_studies():
        render = SECTIONS.get(study.name)
        rows, aggregates = data.rows(study.name), data.aggregates.get(study.name, ())
        section = render(data) if render else default_section(study, rows, aggregates)
        parts.append(section + (stored_means(study.name, rows, aggregates) if section and rows else ""))
    return "".join(parts)
