"""Our own fact file schema, JSONL and CSV: read it (:func:`read_jsonl`, :func:`read_csv`) and write it
(:func:`write_jsonl`).

Our own schema (``.jsonl``), one JSON object per line::

    {"relation": "capital", "templates": ["The capital of [X] is [Y].", "[X]'s capital city is [Y]."]}
    {"subject": "France", "relation": "capital", "object": "Paris"}
    {"subject": "Japan", "relation": "capital", "object": "Tokyo", "id": "capital-jp"}
    {"subject": "Peru", "relation": "capital", "object": "Lima", "templates": ["Peru's capital is [Y]."]}

- A line without ``"subject"`` *declares* a relation: its ``"templates"`` (a list of strings; a single
  ``"template"`` string is accepted too) are used by every fact of that relation that has none of its own.
  Declarations may come anywhere in the file; declaring one relation twice with different templates is an error.
- A fact line needs ``"subject"``, ``"relation"`` and ``"object"`` (non-empty strings). ``"templates"``, if
  given, *replaces* the declared templates for that fact. ``"id"`` is optional (default ``relation:subject``).
- Declared templates must contain ``[X]`` (the subject) and exactly one ``[Y]`` (the answer); a fact's own
  templates need ``[Y]`` and may write the subject out instead of ``[X]``. For causal models put ``[Y]`` at
  the end, after some text: the model reads what comes before it.
- Blank lines and lines starting with ``//`` or ``#`` are skipped; unknown keys are ignored.

The CSV form (``.csv``) has a header row with the columns ``subject,relation,object`` and optionally
``templates`` (several templates separated by ``|``) and ``id``. A row with empty ``subject`` and ``object``
declares its relation's templates, as above.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from kneuron.errors import FactError
from kneuron.facts.fact import Fact
from kneuron.facts.records import (
    SKIP_PREFIXES,
    json_lines,
    location,
    make_fact,
    relation_templates,
    string_field,
    templates_field,
)


class _Schema:
    """Collects declarations and facts of our own schema, then resolves templates."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.declared: dict[str, tuple[str, ...]] = {}
        self.pending: list[tuple[int, str, str, str, tuple[str, ...] | None, str]] = []

    def add(self, number: int, record: dict) -> None:
        where = location(self.path, number)
        relation = string_field(record, "relation", where)
        templates = templates_field(record, where)
        subject = record.get("subject")
        if subject is None and "object" not in record:
            if templates is None:
                raise FactError(f"{where}: relation {relation!r} is declared without 'templates'.")
            checked = relation_templates(templates, relation, where)
            if relation in self.declared and self.declared[relation] != checked:
                raise FactError(f"{where}: relation {relation!r} is declared twice with different templates.")
            self.declared[relation] = checked
            return
        subject = string_field(record, "subject", where)
        obj = string_field(record, "object", where)
        fact_id = string_field(record, "id", where, required=False) or ""
        own = None if templates is None else relation_templates(templates, relation, where, need_subject=False)
        self.pending.append((number, subject, relation, obj, own, fact_id))

    def facts(self) -> list[Fact]:
        facts = []
        for number, subject, relation, obj, own, fact_id in self.pending:
            templates = own if own is not None else self.declared.get(relation)
            where = location(self.path, number)
            if templates is None:
                raise FactError(
                    f"{where}: fact {subject!r} of relation {relation!r} has no templates: give it 'templates' or "
                    f'declare the relation once with a line {{"relation": "{relation}", "templates": [...]}}.'
                )
            facts.append(make_fact(where, subject=subject, relation=relation, object=obj, templates=templates,
                                   id=fact_id))
        return facts


def read_jsonl(path: str | Path) -> list[Fact]:
    """Facts from our own JSONL schema (see the module docstring): relation declarations and fact lines.

    Example:
        >>> facts = read_jsonl("facts.jsonl")
        >>> facts[0].prompts()[0].causal_text
        'The capital of France is'
    """
    path = Path(path)
    schema = _Schema(path)
    for number, record in json_lines(path):
        schema.add(number, record)
    return schema.facts()


def read_csv(path: str | Path) -> list[Fact]:
    """Facts from our own CSV schema: header ``subject,relation,object[,templates][,id]``.

    ``templates`` holds one or more templates separated by ``|``; a row with empty subject and object
    declares the templates of its relation for the rows that have none.
    """
    path = Path(path)
    schema = _Schema(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            fields = set(reader.fieldnames or ())
            missing = {"subject", "relation", "object"} - fields
            if missing:
                raise FactError(
                    f"{location(path, 1)}: the CSV header needs the columns subject, relation, object "
                    f"(and optionally templates, id); missing {sorted(missing)}."
                )
            row_end = reader.line_num
            for row in reader:
                number = row_end + 1  # the line where this row starts
                row_end = reader.line_num
                if None in row:
                    raise FactError(f"{location(path, number)}: the row has more cells than the header has columns.")
                if not any((value or "").strip() for value in row.values()):
                    continue
                if (row.get("subject") or "").lstrip().startswith(SKIP_PREFIXES):
                    continue
                record: dict = {key: value for key, value in row.items() if value not in (None, "")}
                if "templates" in record:
                    record["templates"] = [t.strip() for t in record["templates"].split("|") if t.strip()]
                schema.add(number, record)
    except OSError as exc:
        raise FactError(f"Cannot read facts file {path}: {exc.strerror or exc}.") from None
    except UnicodeDecodeError as exc:
        raise FactError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    except csv.Error as exc:
        raise FactError(f"{location(path, reader.line_num)}: malformed CSV ({exc}).") from None
    return schema.facts()


def write_jsonl(facts: Iterable[Fact], path: str | Path) -> Path:
    """Write ``facts`` in our JSONL schema; :func:`read_jsonl` reads back the same facts.

    A relation whose facts all share the same templates is declared once; otherwise each fact carries its own.
    """
    facts = list(facts)
    by_relation: dict[str, list[Fact]] = defaultdict(list)
    for fact in facts:
        by_relation[fact.relation].append(fact)
    shared = {rel: fs[0].templates for rel, fs in by_relation.items()
              if fs[0].templates and all(f.templates == fs[0].templates for f in fs)}
    path = Path(path)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for relation, templates in shared.items():
            handle.write(json.dumps({"relation": relation, "templates": list(templates)}, ensure_ascii=False) + "\n")
        for fact in facts:
            record: dict = {"subject": fact.subject, "relation": fact.relation, "object": fact.object}
            if fact.relation not in shared:
                record["templates"] = list(fact.templates)
            if fact.id != f"{fact.relation}:{fact.subject}":
                record["id"] = fact.id
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
