"""The report's sections, one per registered study, in the registry's order.

A study's section is the function registered for its name with :func:`report_section` (the built-in ones in
:mod:`kneuron.report.paper_sections` and :mod:`kneuron.report.html`); a study without one still gets a section:
its title, what it measures, and the mean of each of its measures over the facts (:func:`default_section`). So a
new study is in the report as soon as it is registered, and a custom section is one function more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kneuron.report.parts import escape, number, table
from kneuron.studies.base import Study, means_by_measure
from kneuron.studies.registry import registered_studies

#: study name -> its section (``ReportData -> HTML``)
SECTIONS: dict[str, Callable[[Any], str]] = {}


def report_section(study: str) -> Callable[[Callable[[Any], str]], Callable[[Any], str]]:
    """Register the decorated ``ReportData -> HTML`` function as the section of ``study``."""

    def register(render: Callable[[Any], str]) -> Callable[[Any], str]:
        SECTIONS[study] = render
        return render

    return register


def default_section(study: Study, rows: list[dict]) -> str:
    """A study's rows as a section: its title, what it measures and a table of each measure's mean (nothing when
    the atlas has no rows of it)."""
    if not rows:
        return ""
    means = means_by_measure(rows)
    body = table(["variant", "measure", "mean", "n"],
                 [[escape(variant), escape(metric), number(mean, ".4g"), str(n)] for variant, metric, mean, n in means],
                 left=2)
    return (f'<h2 id="study-{escape(study.name)}">{escape(study.title or study.name)}</h2>'
            f'<p class="note">{escape(study.summary_line)} Rows stored under <code>{escape(study.name)}</code>; means '
            "over its rows of each variant and measure.</p>" + body)


def render_sections(data: Any) -> str:
    """Every registered study's section, in the registry's order."""
    parts = []
    for study in registered_studies():
        render = SECTIONS.get(study.name)
        parts.append(render(data) if render else default_section(study, data.rows(study.name)))
    return "".join(parts)
