"""Where facts come from, behind one registry: named sets (``builtin``, ``multilingual``) and file formats.

A :class:`FactSource` has a name, a one-line description and a reader. A *named set* is asked for by its name
(``kneuron run --facts builtin``, ``load_facts("multilingual")``); a *file format* says which paths it reads
(``claims``) and the first registered format that claims a path reads it. :func:`load_facts` is the one entry
point; the CLI's ``--facts`` goes through it and its help lists :func:`fact_sources`. A new source is one module
(its reader) plus one :func:`register_source` call, here for the sources kneuron ships::

    register_source(FactSource("mine", "my facts, from mine.org", read=lambda relations: my_facts()))
    register_source(FactSource("xml", "facts in my XML format (.xml)", read=read_xml,
                               claims=lambda path: path.suffix == ".xml"))

Readers, one module per family of formats, none importing another: :mod:`.schema` (our JSONL and CSV),
:mod:`.pararel` (PARAREL, LAMA T-REx), :mod:`.kn_bags` (the knowledge-neurons data), :mod:`.multilingual` (the
multilingual schema and set), :mod:`.builtin` (the built-in set); :mod:`.records` holds the parsing they share.
JSONL files of different formats are told apart by their first record (:func:`jsonl_kind`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from kneuron.errors import FactError
from kneuron.facts.builtin import builtin_facts
from kneuron.facts.fact import Fact
from kneuron.facts.kn_bags import read_kn_bags
from kneuron.facts.multilingual import multilingual_facts, read_multilingual
from kneuron.facts.pararel import (
    read_lama_relations,
    read_lama_trex,
    read_pararel_patterns,
    read_trex_triples,
    triple_facts,
)
from kneuron.facts.records import json_lines
from kneuron.facts.schema import read_csv, read_jsonl
from kneuron.facts.validation import causal_templates

__all__ = ["FactSource", "fact_source", "fact_sources", "jsonl_kind", "load_facts", "read_folder",
           "register_source", "sources_help"]


@dataclass(frozen=True)
class FactSource:
    """One place facts come from.

    Attributes:
        name: how it is named (``--facts NAME`` for a named set; in messages and listings for a format).
        description: one line: what it holds, where it comes from, how its files are recognised.
        read: a named set: ``read(relations)`` gives its facts (of those relations when not None, raising
            FactError for a relation it lacks); a file format: ``read(path)`` gives the facts of the file or folder.
        claims: a file format: whether it reads ``path`` (an existing file or folder); None for a named set.
    """

    name: str
    description: str
    read: Callable[..., list[Fact]]
    claims: Callable[[Path], bool] | None = None

    @property
    def is_set(self) -> bool:
        """Whether this is a named set (asked for by name) rather than a file format."""
        return self.claims is None


_SOURCES: dict[str, FactSource] = {}


def register_source(source: FactSource, *, replace: bool = False) -> FactSource:
    """Add ``source`` to the registry (formats are tried in registration order); FactError for a name taken
    already, unless ``replace``."""
    if source.name in _SOURCES and not replace:
        raise FactError(f"A fact source named {source.name!r} is registered already; pass replace=True to replace it.")
    _SOURCES[source.name] = source
    return source


def fact_sources() -> list[FactSource]:
    """Every registered source, named sets and file formats, in registration order."""
    return list(_SOURCES.values())


def fact_source(name: str) -> FactSource:
    """The source registered as ``name``; FactError naming those there are."""
    try:
        return _SOURCES[name]
    except KeyError:
        raise FactError(f"No fact source {name!r}; there are {', '.join(_SOURCES)}.") from None


def _set_names() -> list[str]:
    return [s.name for s in _SOURCES.values() if s.is_set]


def sources_help() -> str:
    """The CLI's ``--facts`` help: the named sets, then the file formats (names of :func:`fact_sources`)."""
    formats = ", ".join(s.name for s in _SOURCES.values() if not s.is_set)
    return f"{', '.join(_set_names())}, or a facts file or folder ({formats}: see fact_sources() in kneuron.facts)."


# ------------------------------------------------------------------------------------------------ recognising


def jsonl_kind(path: Path) -> str:
    """What a JSONL file holds, from its first record: 'multilingual', 'pattern' (PARAREL), 'triples' (T-REx),
    'lama-relations', 'schema' (ours) or, without any record, 'empty'."""
    for _, record in json_lines(path):
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


def _jsonl(path: Path) -> bool:
    """Files told apart by their first record: any suffix but .csv and .json."""
    return path.is_file() and path.suffix not in (".csv", ".json")


def _is_jsonl(kind: str) -> Callable[[Path], bool]:
    """A ``claims`` for JSONL files whose first record is of ``kind``. A file that does not parse is claimed by no
    JSONL format (a format registered later may read it); :func:`load_facts` then reports where it fails."""
    def claims(path: Path) -> bool:
        if not _jsonl(path):
            return False
        try:
            return jsonl_kind(path) == kind
        except FactError:
            return False

    return claims


_NO_FACTS = {
    "pattern": "{path} holds PARAREL patterns but no facts: give the folder with both patterns and trex_lms_vocab "
               "triples, or call read_pararel(patterns, triples).",
    "lama-relations": "{path} is LAMA's relations.jsonl (templates only): load a TREx/P*.jsonl file.",
    "empty": "{path} has no facts in it.",
}


def read_folder(folder: Path) -> list[Fact]:
    """The facts of every file found anywhere below ``folder``: PARAREL pattern and T-REx triple files joined by
    relation id, LAMA's TREx triples with its relations.jsonl, knowledge-neurons ``data_*.json`` bags, our JSONL
    schema and multilingual files (CSV files are left out)."""
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
        kind = jsonl_kind(file)
        if kind == "pattern":
            patterns[file.stem] = read_pararel_patterns(file)
        elif kind == "triples":
            triple_files.append(file)
        elif kind == "lama-relations":
            lama.update(read_lama_relations(file))
        elif kind == "schema":
            facts.extend(read_jsonl(file))
        elif kind == "multilingual":
            facts.extend(read_multilingual(file))
    for file in triple_files:
        triples = read_trex_triples(file)
        if file.stem in patterns:  # PARAREL: the pattern file of the same name gives the relation's templates
            triples = [(file.stem, s, o, u) for _, s, o, u in triples]
        facts.extend(triple_facts(triples, {**lama, **patterns}, str(file)))
    facts = list(dict.fromkeys(facts))  # data_11.json and data_all.json of knowledge-neurons overlap
    if not facts:
        raise FactError(
            f"No facts found in folder {folder}: expected PARAREL pattern and T-REx triple files (P36.jsonl), "
            "LAMA's TREx/*.jsonl with relations.jsonl, the knowledge-neurons data_all*.json, or our .jsonl files."
        )
    return facts


def load_facts(source: str | Path, *, relations: Iterable[str] | None = None, causal: bool = False) -> list[Fact]:
    """Facts from a named set (``"builtin"``, ``"multilingual"``), a folder or a file, read by the registered
    source that names or claims it (:func:`fact_sources`):

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
    wanted = set(relations) if relations is not None else None
    if isinstance(source, str) and not source.strip():  # Path("") is the current folder, read as a folder of facts
        named = ", ".join(repr(name) for name in _set_names())
        raise FactError(f"An empty facts source names nothing: give {named}, a .jsonl/.csv/.json file or a folder.")
    if isinstance(source, str) and source in _SOURCES and _SOURCES[source].is_set:
        facts = _SOURCES[source].read(wanted)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            named = ", ".join(repr(name) for name in _set_names())
            raise FactError(f"No facts file or folder at {path}. Give {named}, a .jsonl/.csv/.json file or a folder.")
        reader = next((s for s in _SOURCES.values() if not s.is_set and s.claims(path)), None)
        if reader is None:
            kind = jsonl_kind(path) if _jsonl(path) else ""  # a malformed JSONL file raises here, naming its line
            raise FactError(_NO_FACTS[kind].format(path=path) if kind in _NO_FACTS else
                            f"{path}: no fact source reads this file; registered: {', '.join(_SOURCES)}.")
        facts = reader.read(path)
    if wanted is not None:
        facts = [f for f in facts if f.relation in wanted]
    if causal:
        facts = causal_templates(facts)
    return facts


# ------------------------------------------------------------------------------------------------- the sources

register_source(FactSource("builtin", "the facts shipped with kneuron: everyday relations a small English model can "
                           "know", read=builtin_facts))
register_source(FactSource(
    "multilingual", "the built-in facts in English, French, German, Spanish and Chinese (en/fr/de/es/zh), ids "
    "relation:subject@language", read=lambda relations: multilingual_facts(relations=relations)))
register_source(FactSource("jsonl", "our schema as JSONL: relation declarations and fact lines", read=read_jsonl,
                           claims=_is_jsonl("schema")))
register_source(FactSource("csv", "our schema as CSV (.csv): subject,relation,object[,templates][,id]",
                           read=read_csv, claims=lambda path: path.is_file() and path.suffix == ".csv"))
register_source(FactSource("multilingual-jsonl", "the multilingual schema: entities and per-language templates",
                           read=read_multilingual,
                           claims=_is_jsonl("multilingual")))
register_source(FactSource("lama", "LAMA T-REx triples (TREx/P*.jsonl) with LAMA's relations.jsonl",
                           read=read_lama_trex, claims=_is_jsonl("triples")))
register_source(FactSource("kn-bags", "the knowledge-neurons data: bags of PARAREL prompts, data_all*.json (.json)",
                           read=read_kn_bags, claims=lambda path: path.is_file() and path.suffix == ".json"))
register_source(FactSource("folder", "a folder of PARAREL patterns and triples, LAMA, knowledge-neurons, JSONL or "
                           "multilingual files", read=read_folder, claims=Path.is_dir))
