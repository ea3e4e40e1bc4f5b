"""An atlas's findings as one JSON file: what the docs' findings page renders (``kneuron report --json PATH``).

The file holds the headline beside the paper's figures, every stored study's measures (the lines of its summary
table, :meth:`kneuron.studies.base.Study.measures`) and tables (:meth:`~kneuron.studies.base.Study.result_tables`),
so the registry decides them, not this module, and the stored aggregates (means with their 95% intervals and
paired tests, when the studies were run by a kneuron that stores them). Its ``tables`` are in the format the
docs' hook renders (``docs/hooks.py``: ``<!-- results: PATH -->``)::

    {"command": "kneuron report --run runs/demo.sqlite --json docs/data/findings-smollm2.json",
     "when": "2026-12-07", "model": "smollm2-135m", "facts": 16, "headline": {...},
     "tables": [{"title": ..., "columns": [...], "rows": [[...], ...]}, ...], "aggregates": [{...}, ...]}

Numbers are the atlas's own, unrounded; a figure that is not a number (a study not run) is ``null``.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kneuron.report.data import HEADLINE_FIGURES, ReportData, headline
from kneuron.report.paper_sections import PAPER


def _number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def findings(data: ReportData, aggregates: list[dict[str, Any]], command: str) -> dict[str, Any]:
    """The findings of ``data`` (an atlas's :class:`ReportData`) and its stored ``aggregates`` as a JSON-ready
    dict; ``command`` is the command that made it (shown on the docs page)."""
    from kneuron.studies.registry import registered_studies

    h = headline(data)
    head = {"facts": h.facts, "suppress_percent": h.suppress, "amplify_percent": h.amplify,
            "top_third_percent": h.top_third, "auc_kn": h.auc_kn, "auc_kn_signed": h.auc_kn_signed,
            "auc_activation": h.auc_activation}
    headline_rows = [
        ["suppress (knowledge neurons set to 0): mean Δp/p, %", h.suppress, "suppress", PAPER["suppress"]],
        ["amplify (knowledge neurons doubled): mean Δp/p, %", h.amplify, "amplify", PAPER["amplify"]],
        ["knowledge neurons in the top third of the layers, %", h.top_third, "top_third", "most in the top layers"],
        ["ROC AUC, own vs other facts' prompts: KN activation, sign-aligned", h.auc_kn_signed, "auc_kn_signed",
         "not reported"],
        ["same, raw activation", h.auc_kn, "auc_kn", "not reported"],
        ["same, activation baseline", h.auc_activation, "auc_activation", "not reported"],
    ]

    def stored(key: str, value: float) -> str:
        """The figure's stored interval, n and p (the report's text), or the bare figure with its n."""
        study, variant, metric = HEADLINE_FIGURES[key]
        percent = key in ("suppress", "amplify", "top_third")
        pooled = value / 100 if key == "top_third" and math.isfinite(value) else None
        return data.stat(study, variant, metric, percent=percent, digits=1 if percent else 3, pooled=pooled)

    by_study: dict[str, list[dict[str, Any]]] = {}
    for row in aggregates:
        by_study.setdefault(row["study"], []).append(row)
    measures, study_tables = [], []
    for study in registered_studies():
        rows = data.rows(study.name)
        if rows:
            own = by_study.get(study.name, [])
            measures += [[study.name, measure, value] for measure, value in study.measures(rows, own)]
            study_tables += study.result_tables(rows, own)
    tables = []
    if any(isinstance(v, float) and math.isfinite(v) for _, v, _, _ in headline_rows):  # the paper's studies ran
        tables.append({"title": f"Headline ({h.facts} facts)",
                       "columns": ["measure", "this atlas", "paper (BERT, PARAREL)", "95% interval, n, p (stored)"],
                       "rows": [[m, _number(v), p, stored(key, v)] for m, v, key, p in headline_rows]})
    tables.append({"title": "Every study's measures", "columns": ["study", "measure", "value"], "rows": measures})
    tables += study_tables
    overall = [a for a in aggregates if not a.get("relation")]
    if overall:
        tables.append({"title": "Aggregates over all facts (95% intervals; p: paired test against the control)",
                       "columns": ["study", "variant", "metric", "mean", "low", "high", "n", "control", "p"],
                       "rows": [[a["study"], a["variant"], a["metric"], _number(a["mean"]), _number(a["lo"]),
                                 _number(a["hi"]), a["n"], a["control"], _number(a["p"])] for a in overall]})
    return {"command": command, "when": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "model": data.meta.get("model"), "facts": h.facts, "headline": {k: _number(v) for k, v in head.items()},
            "tables": tables,
            "aggregates": [{k: _number(v) for k, v in a.items()} for a in aggregates]}


#: the keys every findings file has (how an earlier one is told from a user's file it must not replace)
FINDINGS_KEYS = frozenset({"command", "when", "model", "facts", "headline", "tables", "aggregates"})


def is_findings(path: Path) -> bool:
    """Whether ``path`` is a findings file kneuron wrote (a JSON object with exactly :data:`FINDINGS_KEYS`)."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(found, dict) and set(found) == FINDINGS_KEYS


def write_findings(atlas_path: str | Path, out: str | Path, command: str) -> Path:
    """Read the atlas at ``atlas_path`` (read-only) and write its :func:`findings` to ``out`` (a temporary name,
    then renamed: an interrupted write leaves no half file). An existing ``out`` is replaced only when it is a
    findings file (:func:`is_findings`): a user's file of that name is refused, before anything is read."""
    from kneuron.errors import KneuronError
    from kneuron.store import Atlas

    out = Path(out)
    if out.is_dir() or out.exists() and not is_findings(out):
        raise KneuronError(f"{str(out)!r} exists and is not a kneuron findings file; kneuron does not replace it. "
                           "Give another --json path.")
    data = ReportData.from_atlas(atlas_path)
    with Atlas.open(atlas_path, read_only=True) as atlas:
        aggregates = atlas.aggregates()
    text = json.dumps(findings(data, aggregates, command), indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, out)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise KneuronError(f"Cannot write {str(out)!r} ({exc.strerror or exc}); choose a writable --json path."
                           ) from None
    return out
