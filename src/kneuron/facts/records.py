"""The parsing every line-based fact reader shares: JSON lines, typed fields, relation templates, locations.

Every malformed input raises :class:`~kneuron.errors.FactError` naming the file and, for line-based formats, the
line (:func:`location`). The readers of our schema (:mod:`.schema`), PARAREL and LAMA (:mod:`.pararel`) and the
multilingual set (:mod:`.multilingual`) build on these; none of them imports another reader.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from kneuron.errors import FactError
from kneuron.facts.fact import OBJECT, SUBJECT, Fact, Prompt

#: lines (or CSV rows) starting with these are comments
SKIP_PREFIXES = ("//", "#")


def location(path: Path | str, line: int | None = None) -> str:
    """``path:line`` (or just ``path``), for error messages."""
    return f"{path}:{line}" if line is not None else str(path)


def relation_templates(templates: Iterable[str], relation: str, where: str, need_subject: bool = True,
                       ) -> tuple[str, ...]:
    """Relation templates must be strings with [X] (unless ``need_subject`` is False) and exactly one [Y]."""
    checked = []
    for template in templates:
        if not isinstance(template, str):
            raise FactError(f"{where}: a template of relation {relation!r} is {template!r}, not a string.")
        if (need_subject and SUBJECT not in template) or OBJECT not in template:
            missing = " and ".join(p for p in (SUBJECT, OBJECT) if p not in template)
            raise FactError(
                f"{where}: template {template!r} of relation {relation!r} lacks {missing}. Every template needs "
                f"{SUBJECT} where the subject goes and {OBJECT} where the answer goes, e.g. "
                f"'The capital of {SUBJECT} is {OBJECT}.'"
            )
        try:
            Prompt.from_template(template, "subject")
        except FactError as exc:
            raise FactError(f"{where}: relation {relation!r}: {exc}") from None
        checked.append(template)
    if not checked:
        raise FactError(f"{where}: relation {relation!r} has no templates; give at least one.")
    return tuple(checked)


def json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank, non-comment line of a JSONL file; FactError on a malformed line."""
    try:
        handle = path.open(encoding="utf-8-sig")
    except OSError as exc:
        raise FactError(f"Cannot read facts file {path}: {exc.strerror or exc}.") from None
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                text = line.strip()
                if not text or text.startswith(SKIP_PREFIXES):
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    where = location(path, number)
                    raise FactError(f"{where}: malformed JSON ({exc.msg}, column {exc.colno}).") from None
                if not isinstance(record, dict):
                    raise FactError(
                        f"{location(path, number)}: expected a JSON object per line, got {type(record).__name__}."
                    )
                yield number, record
        except UnicodeDecodeError as exc:
            raise FactError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None


def string_field(record: dict, key: str, where: str, required: bool = True) -> str | None:
    """``record[key]``, a string (non-empty when ``required``); None for a missing optional field."""
    value = record.get(key)
    if value is None:
        if required:
            raise FactError(f"{where}: missing {key!r} (keys found: {sorted(record)}).")
        return None
    if not isinstance(value, str):
        raise FactError(f"{where}: {key!r} must be a string, got {value!r}.")
    if required and not value.strip():
        raise FactError(f"{where}: {key!r} is empty.")
    return value


def templates_field(record: dict, where: str) -> list[str] | None:
    """A record's ``"templates"`` (a list, or one string) or ``"template"``; None when it has neither."""
    if "templates" in record:
        templates = record["templates"]
        if isinstance(templates, str):
            templates = [templates]
        if not isinstance(templates, list):
            raise FactError(f"{where}: 'templates' must be a list of strings, got {templates!r}.")
        return templates
    if "template" in record:
        return [string_field(record, "template", where)]
    return None


def make_fact(where: str, **fields) -> Fact:
    """``Fact(**fields)``, its FactError prefixed with ``where``."""
    try:
        return Fact(**fields)
    except FactError as exc:
        raise FactError(f"{where}: {exc}") from None
