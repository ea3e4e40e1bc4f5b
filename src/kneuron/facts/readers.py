"""Read facts from files: our own JSONL/CSV schema, PARAREL, LAMA T-REx and the official knowledge-neurons data.

One entry point, :func:`load_facts`, takes ``"builtin"``, ``"multilingual"``, a directory or a file and picks the
reader. Every
reader returns plain :class:`~kneuron.facts.fact.Fact` values; every malformed input raises
:class:`~kneuron.errors.FactError` naming the file and, for line-based formats, the line.

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
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from kneuron.errors import FactError
from kneuron.facts.fact import OBJECT, SUBJECT, Fact, Prompt, check_filler
from kneuron.facts.validation import causal_templates

_SKIP_PREFIXES = ("//", "#")
MASK = "[MASK]"


# --------------------------------------------------------------------------------------------------- helpers


def _where(path: Path | str, line: int | None = None) -> str:
    return f"{path}:{line}" if line is not None else str(path)


def _check_relation_templates(templates: Iterable[str], relation: str, where: str,
                              need_subject: bool = True) -> tuple[str, ...]:
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


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; FactError on a malformed line."""
    try:
        handle = path.open(encoding="utf-8-sig")
    except OSError as exc:
        raise FactError(f"Cannot read facts file {path}: {exc.strerror or exc}.") from None
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                text = line.strip()
                if not text or text.startswith(_SKIP_PREFIXES):
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    where = _where(path, number)
                    raise FactError(f"{where}: malformed JSON ({exc.msg}, column {exc.colno}).") from None
                if not isinstance(record, dict):
                    raise FactError(
                        f"{_where(path, number)}: expected a JSON object per line, got {type(record).__name__}."
                    )
                yield number, record
        except UnicodeDecodeError as exc:
            raise FactError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None


def _string(record: dict, key: str, where: str, required: bool = True) -> str | None:
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


def _templates_of(record: dict, where: str) -> list[str] | None:
    if "templates" in record:
        templates = record["templates"]
        if isinstance(templates, str):
            templates = [templates]
        if not isinstance(templates, list):
            raise FactError(f"{where}: 'templates' must be a list of strings, got {templates!r}.")
        return templates
    if "template" in record:
        return [_string(record, "template", where)]
    return None


def _make_fact(where: str, **fields) -> Fact:
    try:
        return Fact(**fields)
    except FactError as exc:
        raise FactError(f"{where}: {exc}") from None


class _Schema:
    """Collects declarations and facts of our own schema, then resolves templates."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.declared: dict[str, tuple[str, ...]] = {}
        self.pending: list[tuple[int, str, str, str, tuple[str, ...] | None, str]] = []

    def add(self, number: int, record: dict) -> None:
        where = _where(self.path, number)
        relation = _string(record, "relation", where)
        templates = _templates_of(record, where)
        subject = record.get("subject")
        if subject is None and "object" not in record:
            if templates is None:
                raise FactError(f"{where}: relation {relation!r} is declared without 'templates'.")
            checked = _check_relation_templates(templates, relation, where)
            if relation in self.declared and self.declared[relation] != checked:
                raise FactError(f"{where}: relation {relation!r} is declared twice with different templates.")
            self.declared[relation] = checked
            return
        subject = _string(record, "subject", where)
        obj = _string(record, "object", where)
        fact_id = _string(record, "id", where, required=False) or ""
        own = None if templates is None else _check_relation_templates(templates, relation, where, need_subject=False)
        self.pending.append((number, subject, relation, obj, own, fact_id))

    def facts(self) -> list[Fact]:
        facts = []
        for number, subject, relation, obj, own, fact_id in self.pending:
            templates = own if own is not None else self.declared.get(relation)
            where = _where(self.path, number)
            if templates is None:
                raise FactError(
                    f"{where}: fact {subject!r} of relation {relation!r} has no templates: give it 'templates' or "
                    f'declare the relation once with a line {{"relation": "{relation}", "templates": [...]}}.'
                )
            facts.append(_make_fact(where, subject=subject, relation=relation, object=obj, templates=templates,
                                    id=fact_id))
        return facts


# ------------------------------------------------------------------------------------------------ our schema


def read_jsonl(path: str | Path) -> list[Fact]:
    """Facts from our own JSONL schema (see the module docstring): relation declarations and fact lines.

    Example:
        >>> facts = read_jsonl("facts.jsonl")
        >>> facts[0].prompts()[0].causal_text
        'The capital of France is'
    """
    path = Path(path)
    schema = _Schema(path)
    for number, record in _json_lines(path):
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
                    f"{_where(path, 1)}: the CSV header needs the columns subject, relation, object "
                    f"(and optionally templates, id); missing {sorted(missing)}."
                )
            row_end = reader.line_num
            for row in reader:
                number = row_end + 1  # the line where this row starts
                row_end = reader.line_num
                if None in row:
                    raise FactError(f"{_where(path, number)}: the row has more cells than the header has columns.")
                if not any((value or "").strip() for value in row.values()):
                    continue
                if (row.get("subject") or "").lstrip().startswith(_SKIP_PREFIXES):
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
        raise FactError(f"{_where(path, reader.line_num)}: malformed CSV ({exc}).") from None
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


# --------------------------------------------------------------------------------------- PARAREL and LAMA


def read_pararel_patterns(path: str | Path) -> tuple[str, ...]:
    """The templates of one PARAREL relation file (``data/pattern_data/graphs_json/P36.jsonl``).

    Follows PARAREL's documented pattern format (Elazar et al. 2021, github.com/yanaiela/pararel), one JSON
    object per line: ``{"pattern": "[X] is the capital of [Y].", "lemma": "capital", "extended_lemma":
    "capital-of", "tense": "present"}``. Only ``pattern`` is used.
    """
    path = Path(path)
    patterns = []
    for number, record in _json_lines(path):
        where = _where(path, number)
        pattern = _string(record, "pattern", where)
        patterns.extend(_check_relation_templates([pattern], path.stem, where))
    if not patterns:
        raise FactError(f"{path}: no patterns in this PARAREL relation file.")
    return tuple(dict.fromkeys(patterns))


def read_trex_triples(path: str | Path) -> list[tuple[str, str, str, str]]:
    """(relation, subject, object, uuid) of a T-REx triples file, LAMA's or PARAREL's.

    LAMA's ``data/TREx/P36.jsonl`` lines read ``{"uuid": ..., "obj_uri": "Q3561", "obj_label": "Praia",
    "sub_uri": "Q1011", "sub_label": "Cape Verde", "predicate_id": "P36", "evidences": [...]}``; PARAREL's
    filtered copy ``data/trex_lms_vocab/P36.jsonl`` keeps ``{"sub_label", "obj_label", "uuid"}``. The
    relation is ``predicate_id`` when present, else the file name (``P36``).
    """
    path = Path(path)
    triples = []
    for number, record in _json_lines(path):
        where = _where(path, number)
        subject = _string(record, "sub_label", where)
        obj = _string(record, "obj_label", where)
        relation = _string(record, "predicate_id", where, required=False) or path.stem
        uuid = record.get("uuid")
        try:
            check_filler(subject, "subject", f"{relation}:{subject}")
            check_filler(obj, "object", f"{relation}:{subject}")
        except FactError as exc:
            raise FactError(f"{where}: {exc}") from None
        triples.append((relation, subject, obj, str(uuid) if uuid is not None else ""))
    return triples


def read_lama_relations(path: str | Path) -> dict[str, tuple[str, ...]]:
    """LAMA's ``data/relations.jsonl``: relation id -> its one template.

    Lines follow LAMA's format (Petroni et al. 2019, github.com/facebookresearch/LAMA): ``{"relation": "P36",
    "template": "The capital of [X] is [Y] .", "label": "capital", "description": ..., "type": "1-1"}``.
    """
    path = Path(path)
    templates = {}
    for number, record in _json_lines(path):
        where = _where(path, number)
        relation = _string(record, "relation", where)
        templates[relation] = _check_relation_templates([_string(record, "template", where)], relation, where)
    return templates


def _triple_facts(triples: list[tuple[str, str, str, str]], templates: dict[str, tuple[str, ...]],
                  where: str) -> list[Fact]:
    facts = []
    for relation, subject, obj, uuid in triples:
        if relation not in templates:
            raise FactError(
                f"{where}: no templates for relation {relation!r}: give its PARAREL pattern file "
                f"({relation}.jsonl) or LAMA's relations.jsonl."
            )
        facts.append(_make_fact(where, subject=subject, relation=relation, object=obj, templates=templates[relation],
                                id=f"{relation}:{uuid}" if uuid else ""))
    return facts


def read_pararel(patterns: str | Path, triples: str | Path) -> list[Fact]:
    """PARAREL facts: relation patterns plus T-REx triples, matched by relation id (the file name).

    ``patterns`` and ``triples`` are either one file each (``graphs_json/P36.jsonl`` and
    ``trex_lms_vocab/P36.jsonl``) or the two directories of PARAREL's layout
    (``data/pattern_data/graphs_json/`` and ``data/trex_lms_vocab/``). Relations without a pattern file are
    skipped when directories are given. Formats: see :func:`read_pararel_patterns` and :func:`read_trex_triples`.
    """
    patterns, triples = Path(patterns), Path(triples)
    if patterns.is_dir() != triples.is_dir():
        raise FactError("Give read_pararel two files or two directories (patterns, triples), not one of each.")
    if patterns.is_file():
        rel_templates = {patterns.stem: read_pararel_patterns(patterns)}
        found = read_trex_triples(triples)
        found = [(patterns.stem, s, o, u) for _, s, o, u in found]  # the pattern file names the relation
        return _triple_facts(found, rel_templates, str(triples))
    facts = []
    for pattern_file in sorted(patterns.glob("*.jsonl")):
        triple_file = triples / pattern_file.name
        if triple_file.exists():
            facts.extend(read_pararel(pattern_file, triple_file))
    if not facts:
        raise FactError(f"No PARAREL relation has both {patterns}/P*.jsonl and {triples}/P*.jsonl.")
    return facts


def _find_lama_relations(path: Path) -> Path | None:
    for folder in (path.parent, path.parent.parent, path.parent.parent.parent):
        candidate = folder / "relations.jsonl"
        if candidate.is_file():
            return candidate
    return None


def read_lama_trex(path: str | Path, relations: str | Path | dict[str, Iterable[str]] | None = None) -> list[Fact]:
    """LAMA T-REx facts (``data/TREx/P36.jsonl``, format in :func:`read_trex_triples`) with LAMA's templates.

    ``relations`` is LAMA's ``relations.jsonl`` (see :func:`read_lama_relations`) or a dict relation ->
    templates; by default a ``relations.jsonl`` beside the file or up to two folders above it (LAMA keeps
    ``data/relations.jsonl`` next to ``data/TREx/``).
    """
    path = Path(path)
    if relations is None:
        found = _find_lama_relations(path)
        if found is None:
            raise FactError(
                f"{path}: LAMA T-REx triples carry no templates and no relations.jsonl was found beside them; "
                "pass relations= (LAMA's data/relations.jsonl or a dict relation -> templates)."
            )
        relations = found
    if isinstance(relations, dict):
        templates = {rel: _check_relation_templates(ts, rel, "relations") for rel, ts in relations.items()}
    else:
        templates = read_lama_relations(relations)
    return _triple_facts(read_trex_triples(path), templates, str(path))


# ----------------------------------------------------------------------------- official knowledge-neurons data

_WORD = re.compile(r"\w(?:[\w'’.&-]*\w)?")


def _common_spans(sentences: list[str]) -> list[str]:
    """Word-aligned spans of the first sentence found in all sentences, longest first, masks excluded."""
    first = sentences[0]
    words = [m for m in _WORD.finditer(first) if m.group() != "MASK" or first[max(m.start() - 1, 0)] != "["]
    spans = set()
    for i, start in enumerate(words):
        for end in words[i:]:
            span = first[start.start():end.end()]
            if MASK in span:
                break
            if all(span in s for s in sentences[1:]):
                spans.add(span)
            else:
                break
    return sorted(spans, key=lambda s: (-len(s), s))


def _bag_templates(sentences: list[str], subject: str) -> tuple[str, ...]:
    return tuple(s.replace(subject, SUBJECT, 1).replace(MASK, OBJECT) for s in sentences)


def read_kn_bags(path: str | Path) -> list[Fact]:
    """Facts from the official knowledge-neurons code's data (github.com/Hunter-DDM/knowledge-neurons).

    Reads ``data/PARAREL/data_all_allbags.json``, a JSON object relation -> list of bags, and its source
    ``data_all.json``, a flat JSON list of bags. A bag is one fact: a list of ``[sentence, answer, relation]``
    entries, one per PARAREL template, e.g. ``["The capital of France is [MASK] .", "Paris", "P36(capital)"]``
    (the relation is the id followed by LAMA's label in parentheses).

    The files do not say which words are the subject, so it is inferred: the word-aligned text that all
    prompts of the bag share and that yields the same templates as the relation's other bags (the longest
    such text when a relation has a single bag). A bag where nothing can be inferred keeps its sentences as
    templates without ``[X]`` and uses the first sentence as the subject.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise FactError(f"Cannot read facts file {path}: {exc.strerror or exc}.") from None
    except json.JSONDecodeError as exc:
        raise FactError(f"{_where(path, exc.lineno)}: malformed JSON ({exc.msg}, column {exc.colno}).") from None
    except UnicodeDecodeError as exc:
        raise FactError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    if isinstance(data, dict):
        bags = [(rel, index, bag) for rel, rel_bags in data.items() for index, bag in enumerate(rel_bags)]
    elif isinstance(data, list):
        bags = [(None, index, bag) for index, bag in enumerate(data)]
    else:
        raise FactError(f"{path}: expected a JSON object (relation -> bags) or a list of bags.")

    parsed: list[tuple[str, str, list[str], str]] = []  # relation, answer, sentences, location
    for rel, index, bag in bags:
        where = f"{path} (relation {rel}, bag {index})" if rel is not None else f"{path} (bag {index})"
        if not isinstance(bag, list) or not bag:
            raise FactError(f"{where}: a bag must be a non-empty list of [sentence, answer, relation] entries.")
        sentences = []
        for entry in bag:
            ok = isinstance(entry, list) and len(entry) >= 2 and all(isinstance(x, str) for x in entry[:3])
            if not ok:
                raise FactError(f"{where}: entry {entry!r} is not [sentence, answer, relation].")
            if entry[0].count(MASK) != 1:
                raise FactError(f"{where}: sentence {entry[0]!r} needs exactly one {MASK} where the answer goes.")
            sentences.append(entry[0])
        answer = bag[0][1]
        relation = rel if rel is not None else (bag[0][2].split("(")[0].strip() if len(bag[0]) > 2 else "")
        parsed.append((relation or path.stem, answer, sentences, where))

    candidates = [_common_spans(sentences) for _, _, sentences, _ in parsed]
    votes: dict[str, Counter] = defaultdict(Counter)
    for (relation, _, sentences, _), spans in zip(parsed, candidates, strict=True):
        for span in spans:
            votes[relation][_bag_templates(sentences, span)] += 1
    facts = []
    for (relation, answer, sentences, where), spans in zip(parsed, candidates, strict=True):
        if spans:
            subject = max(spans, key=lambda s: (votes[relation][_bag_templates(sentences, s)], len(s)))
            templates = _bag_templates(sentences, subject)
        else:
            subject, templates = sentences[0].replace(MASK, "").strip(), tuple(s.replace(MASK, OBJECT)
                                                                               for s in sentences)
        facts.append(_make_fact(where, subject=subject, relation=relation, object=answer, templates=templates))
    return facts


# ------------------------------------------------------------------------------------------------ dispatch


def _sniff_jsonl(path: Path) -> str:
    """'pattern', 'triples', 'lama-relations', 'multilingual' or 'schema', from the first record of a JSONL file."""
    for _, record in _json_lines(path):
        if "entity" in record or "objects" in record or isinstance(record.get("templates"), dict):
            return "multilingual"
        if "pattern" in record:
            return "pattern"
        if "sub_label" in record or "obj_label" in record:
            return "triples"
        if "template" in record and "subject" not in record and ("label" in record or "type" in record):
            return "lama-relations"
        return "schema"
    return "empty"


def _read_directory(folder: Path) -> list[Fact]:
    """PARAREL / LAMA folders: pattern files, T-REx triple files and relations.jsonl, found anywhere below."""
    patterns: dict[str, tuple[str, ...]] = {}
    lama: dict[str, tuple[str, ...]] = {}
    triple_files: list[Path] = []
    facts: list[Fact] = []
    for file in sorted(folder.rglob("*")):
        if not file.is_file() or file.suffix not in (".jsonl", ".json", ".csv"):
            continue
        if file.suffix == ".json":
            if file.name.startswith("data_"):
                facts.extend(read_kn_bags(file))
            continue
        if file.suffix == ".csv":
            continue
        kind = _sniff_jsonl(file)
        if kind == "pattern":
            patterns[file.stem] = read_pararel_patterns(file)
        elif kind == "triples":
            triple_files.append(file)
        elif kind == "lama-relations":
            lama.update(read_lama_relations(file))
        elif kind == "schema":
            facts.extend(read_jsonl(file))
        elif kind == "multilingual":
            from kneuron.facts.multilingual import read_multilingual

            facts.extend(read_multilingual(file))
    for file in triple_files:
        triples = read_trex_triples(file)
        if file.stem in patterns:  # PARAREL: the pattern file of the same name gives the relation's templates
            triples = [(file.stem, s, o, u) for _, s, o, u in triples]
        facts.extend(_triple_facts(triples, {**lama, **patterns}, str(file)))
    facts = list(dict.fromkeys(facts))  # data_11.json and data_all.json of knowledge-neurons overlap
    if not facts:
        raise FactError(
            f"No facts found in folder {folder}: expected PARAREL pattern and T-REx triple files (P36.jsonl), "
            "LAMA's TREx/*.jsonl with relations.jsonl, the knowledge-neurons data_all*.json, or our .jsonl files."
        )
    return facts


def load_facts(source: str | Path, *, relations: Iterable[str] | None = None, causal: bool = False) -> list[Fact]:
    """Facts from ``"builtin"``, ``"multilingual"``, a folder or a file, with the reader its format needs.

    - ``"builtin"``: the facts shipped with kneuron (:func:`kneuron.facts.builtin.builtin_facts`);
    - ``"multilingual"``: the built-in facts in English, French, German, Spanish and Chinese, ids
      ``relation:subject@language`` (:func:`kneuron.facts.multilingual.multilingual_facts`);
    - a folder: PARAREL (``graphs_json/P*.jsonl`` patterns and ``trex_lms_vocab/P*.jsonl`` triples), LAMA
      (``TREx/P*.jsonl`` and ``relations.jsonl``), knowledge-neurons ``data_all*.json`` or our ``.jsonl`` files;
    - ``.jsonl``: our schema, the multilingual schema, LAMA T-REx triples or PARAREL (told apart by the first
      line's keys);
    - ``.csv``: our schema; ``.json``: the knowledge-neurons bags.

    Args:
        relations: keep only these relations.
        causal: keep only templates with the subject before ``[Y]`` (what a causal LM can use).
    """
    from kneuron.facts.builtin import builtin_facts  # builtin and multilingual use this module's readers
    from kneuron.facts.multilingual import multilingual_facts, read_multilingual

    wanted = set(relations) if relations is not None else None
    if isinstance(source, str) and source == "builtin":
        facts = builtin_facts(wanted)
    elif isinstance(source, str) and source == "multilingual":
        facts = multilingual_facts(relations=wanted)
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            facts = _read_directory(path)
        elif not path.exists():
            raise FactError(f"No facts file or folder at {path}. Give 'builtin', 'multilingual', a .jsonl/.csv/.json "
                           "file or a folder.")
        elif path.suffix == ".csv":
            facts = read_csv(path)
        elif path.suffix == ".json":
            facts = read_kn_bags(path)
        else:
            kind = _sniff_jsonl(path)
            if kind == "triples":
                facts = read_lama_trex(path)
            elif kind == "pattern":
                raise FactError(
                    f"{path} holds PARAREL patterns but no facts: give the folder with both patterns and "
                    "trex_lms_vocab triples, or call read_pararel(patterns, triples)."
                )
            elif kind == "lama-relations":
                raise FactError(f"{path} is LAMA's relations.jsonl (templates only): load a TREx/P*.jsonl file.")
            elif kind == "empty":
                raise FactError(f"{path} has no facts in it.")
            elif kind == "multilingual":
                facts = read_multilingual(path)
            else:
                facts = read_jsonl(path)
    if wanted is not None:
        facts = [f for f in facts if f.relation in wanted]
    if causal:
        facts = causal_templates(facts)
    return facts
