"""PARAREL (Elazar et al. 2021) and LAMA T-REx (Petroni et al. 2019): relation patterns or templates, and T-REx
triples, matched by relation id.

PARAREL keeps one pattern file per relation (``data/pattern_data/graphs_json/P36.jsonl``) and its filtered triples
(``data/trex_lms_vocab/P36.jsonl``): :func:`read_pararel`. LAMA keeps its triples in ``data/TREx/P36.jsonl`` and one
template per relation in ``data/relations.jsonl``: :func:`read_lama_trex`. Malformed input raises
:class:`~kneuron.errors.FactError` naming the file and line.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from kneuron.errors import FactError
from kneuron.facts.fact import Fact, check_filler
from kneuron.facts.records import json_lines, location, make_fact, relation_templates, string_field


def read_pararel_patterns(path: str | Path) -> tuple[str, ...]:
    """The templates of one PARAREL relation file (``data/pattern_data/graphs_json/P36.jsonl``).

    Follows PARAREL's documented pattern format (Elazar et al. 2021, github.com/yanaiela/pararel), one JSON
    object per line: ``{"pattern": "[X] is the capital of [Y].", "lemma": "capital", "extended_lemma":
    "capital-of", "tense": "present"}``. Only ``pattern`` is used.
    """
    path = Path(path)
    patterns = []
    for number, record in json_lines(path):
        where = location(path, number)
        pattern = string_field(record, "pattern", where)
        patterns.extend(relation_templates([pattern], path.stem, where))
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
    for number, record in json_lines(path):
        where = location(path, number)
        subject = string_field(record, "sub_label", where)
        obj = string_field(record, "obj_label", where)
        relation = string_field(record, "predicate_id", where, required=False) or path.stem
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
    for number, record in json_lines(path):
        where = location(path, number)
        relation = string_field(record, "relation", where)
        templates[relation] = relation_templates([string_field(record, "template", where)], relation, where)
    return templates


def triple_facts(triples: list[tuple[str, str, str, str]], templates: dict[str, tuple[str, ...]],
                 where: str) -> list[Fact]:
    """Facts of (relation, subject, object, uuid) triples with their relation's ``templates``; FactError for a
    relation without templates."""
    facts = []
    for relation, subject, obj, uuid in triples:
        if relation not in templates:
            raise FactError(
                f"{where}: no templates for relation {relation!r}: give its PARAREL pattern file "
                f"({relation}.jsonl) or LAMA's relations.jsonl."
            )
        facts.append(make_fact(where, subject=subject, relation=relation, object=obj, templates=templates[relation],
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
        return triple_facts(found, rel_templates, str(triples))
    facts = []
    for pattern_file in sorted(patterns.glob("*.jsonl")):
        triple_file = triples / pattern_file.name
        if triple_file.exists():
            facts.extend(read_pararel(pattern_file, triple_file))
    if not facts:
        raise FactError(f"No PARAREL relation has both {patterns}/P*.jsonl and {triples}/P*.jsonl.")
    return facts


def find_lama_relations(path: Path) -> Path | None:
    """LAMA's ``relations.jsonl`` beside ``path`` or up to two folders above it; None when there is none."""
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
        found = find_lama_relations(path)
        if found is None:
            raise FactError(
                f"{path}: LAMA T-REx triples carry no templates and no relations.jsonl was found beside them; "
                "pass relations= (LAMA's data/relations.jsonl or a dict relation -> templates)."
            )
        relations = found
    if isinstance(relations, dict):
        templates = {rel: relation_templates(ts, rel, "relations") for rel, ts in relations.items()}
    else:
        templates = read_lama_relations(relations)
    return triple_facts(read_trex_triples(path), templates, str(path))
