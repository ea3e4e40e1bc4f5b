"""The HTML report: one self-contained file (inline CSS, figures as PNG data URIs, no scripts, no links to fetch)
with the tables and figures of the studies stored in an atlas, and the headline numbers next to the paper's.

It opens with the title, any "not current" warnings, one line (facts, model) and the headline table; then one
section per study; the run's raw parameters (``params.*``, ``generic.*``, ...) come last, folded in a
``<details id="parameters">``.

Example:
    >>> data = ReportData.from_atlas("runs/demo.sqlite")
    >>> write_report(data, "runs/demo.html")
    >>> print(headline_line("runs/demo.html", data))
    report=runs/demo.html facts=16 suppress=-81.64% [-88.0, -74.1] n=16 amplify=+40.12% [31.0, 50.2] n=16 ...

Each figure of the headline and of the tables carries the stored 95% interval and n of its aggregate
(:meth:`ReportData.stat`); the figures above are illustrative.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from kneuron.report import edit_methods, paper_sections, tracing  # noqa: F401  (register their sections)
from kneuron.report.data import Headline, ReportData, headline, headline_line
from kneuron.report.paper_sections import headline_section
from kneuron.report.parts import escape as _e
from kneuron.report.sections import render_sections, report_section

__all__ = ["Headline", "ReportData", "headline", "headline_line", "is_report", "render_report", "write_report"]

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em;
margin-top: 2em; } h3 { margin-top: 1.4em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.l, th.l { text-align: left; }
img { max-width: 100%; display: block; margin: 0.8em 0; border: 1px solid #eee; }
.note { color: #555; font-size: 0.9em; } .meta { color: #555; }
.warn { background: #fff4e0; border-left: 5px solid #e69500; padding: 0.6em 1em; margin: 1em 0; }
.neg { color: #b00020; } .pos { color: #1b7f1b; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""



@report_section("editing")
def _editing_section(data: ReportData) -> str:
    """The editing study's section (see :mod:`kneuron.report.editing`), only when the atlas has its rows."""
    rows = data.rows("editing")
    if not rows:
        return ""
    from kneuron.report.editing import editing_section

    return editing_section(rows, data.aggregates.get("editing", ()))


@report_section("edit_robustness")
def _edit_robustness_section(data: ReportData) -> str:
    """Edits under Niu et al.'s tests (see :mod:`kneuron.report.edit_robustness`), only when the atlas has its rows."""
    from kneuron.report.edit_robustness import edit_robustness_section

    section = edit_robustness_section(data.rows("edit_robustness"), data.aggregates.get("edit_robustness", ()))
    return "<h2>Editing knowledge</h2>" + section if section and not data.rows("editing") else section


@report_section("estimators")
def _estimators_section(data: ReportData) -> str:
    """The estimator study's section (see :mod:`kneuron.report.estimators`); says how to run it when missing."""
    from kneuron.report.estimators import estimators_section

    done = int(data.done.get("facts", 0)) if data.done else data.n_facts
    return estimators_section(data.rows("estimators"), data.coverage.get("estimators"), done,
                              data.source or "ATLAS", data.aggregates.get("estimators", ()))


@report_section("languages")
def _languages_section(data: ReportData) -> str:
    """The cross-lingual study's section (see :mod:`kneuron.report.languages`), only when the atlas has its rows."""
    from kneuron.report.languages import languages_section

    done = int(data.done.get("facts", 0)) if data.done else data.n_facts
    return languages_section(data.rows("languages"), data.coverage.get("languages"), done,
                             data.aggregates.get("languages", ()))


@report_section("vocabulary")
def _vocabulary_section(data: ReportData) -> str:
    """What the knowledge neurons write (see :mod:`kneuron.report.vocabulary`); says how to run it when missing."""
    from kneuron.report.vocabulary import vocabulary_section

    done = int(data.done.get("facts", 0)) if data.done else data.n_facts
    return vocabulary_section(data.rows("vocabulary"), data.vocabulary, data.coverage.get("vocabulary"), done,
                              data.source or "ATLAS", data.aggregates.get("vocabulary", ()))


@report_section("interactions")
def _interactions_section(data: ReportData) -> str:
    """The neuron-interactions study's section (see :mod:`kneuron.report.interactions`), only when the atlas has its
    rows."""
    from kneuron.report.interactions import interactions_section

    done = int(data.done.get("facts", 0)) if data.done else data.n_facts
    return interactions_section(data.rows("interactions"), data.coverage.get("interactions"), done,
                                data.aggregates.get("interactions", ()))


@report_section("consistency")
def _consistency_section(data: ReportData) -> str:
    """The consistency study's section (see :mod:`kneuron.report.consistency`); says how to run it when missing."""
    from kneuron.report.consistency import consistency_section
    from kneuron.studies.consistency import COMPARED_STUDIES

    others = {study: data.rows(study) for study in COMPARED_STUDIES}
    return consistency_section(data.rows("consistency"), others, data.coverage.get("consistency"), data.done,
                               data.source or "ATLAS", data.aggregates.get("consistency", ()))


def render_report(data: ReportData) -> str:
    """The whole report as one HTML string."""
    flat = {}
    for key, value in data.meta.items():
        if isinstance(value, dict):  # e.g. the run's params and the generic settings
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    shown = [(k, v) for k, v in sorted(flat.items()) if isinstance(v, (str, int, float))]
    meta = "".join(f'<tr><td class="l"><code>{_e(k)}</code></td><td class="l">{_e(v)}</td></tr>' for k, v in shown)
    model = data.meta.get("model")
    body = "".join([
        f"<h1>{_e(data.title)}</h1>",
        "".join(f'<div class="warn stale"><b>Not current:</b> {_e(line)}</div>' for line in data.warnings()),
        f'<p class="meta">{data.n_facts} facts' + (f" of {_e(model)}" if model else "") + ".</p>",
        headline_section(data),
        render_sections(data),
        # the run's raw parameters last, folded: the report opens with its headline, not with them
        f'<details id="parameters"><summary>Run parameters ({len(shown)})</summary><table><tbody>{meta}</tbody>'
        "</table></details>" if meta else "",
    ])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{GENERATOR}<title>{_e(data.title)}</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")


#: what marks a file as a kneuron report (the only kind of existing file a report replaces)
GENERATOR = '<meta name="generator" content="kneuron report">'
#: how reports written before the generator tag began
OLD_REPORT_START = '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Knowledge neurons'


def is_report(path: str | Path) -> bool:
    """Whether the file at ``path`` is a report kneuron wrote (by its first bytes)."""
    with open(path, "rb") as handle:
        start = handle.read(512).decode("utf-8", "replace")
    return GENERATOR in start or start.startswith(OLD_REPORT_START)


def write_report(data: ReportData, path: str | Path) -> Path:
    """Write the report to ``path`` and return the path.

    It writes only there (through a temporary file beside it, renamed into place, so an interrupted write leaves
    the previous file whole); missing parent folders are created. An existing file is replaced only when it is a
    kneuron report.

    Raises:
        KneuronError: ``path`` is a folder, an existing file that is not a kneuron report, or not writable.
    """
    from kneuron.errors import KneuronError

    path = Path(path).expanduser()
    if path.is_dir():
        raise KneuronError(f"'{path}' is a folder: give the report's file, e.g. --out {path / 'report.html'}.")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if path.exists() and not is_report(path):
            raise KneuronError(f"'{path}' exists and is not a kneuron report; kneuron does not replace it. Give "
                               "another --out path (or move that file away).")
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(render_report(data), encoding="utf-8")
        os.replace(temporary, path)
    except OSError as exc:
        raise KneuronError(f"Cannot write the report to '{path}' ({exc.strerror or exc}); give a writable --out "
                           "path.") from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    return path
