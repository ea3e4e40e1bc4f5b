"""Data for testing edits the way Niu et al. (ICLR 2024) do: reversed relations and subjects' aliases.

``facts/data/robustness.jsonl`` holds two kinds of records (one JSON object per line):

* a **one-to-one relation** of the built-in set, with its reverse templates::

      {"relation": "capital", "one_to_one": true, "reverse_templates": ["[X] is the capital of [Y].", ...]}

  A reverse template asks the relation backwards: ``[X]`` takes the fact's *object* and ``[Y]`` is where its
  *subject* is answered ("Paris is the capital of [France]"). ``one_to_one`` is ``true`` when every fact of the
  relation is one-to-one, or the list of subjects whose facts are (``currency``: the yen is Japan's alone, the
  euro, dollar, peso, rupee, pound, krone, franc are shared by several countries in the world, and the ruble,
  won, krona, riyal, rand and shekel have a namesake or a second user, so they are left out). Among the
  one-to-one facts of a relation no subject and no object occurs twice, so the reverse query has one answer.
* **aliases** of a subject: other English names of the same thing, used in the subject's place in every
  template of its facts (or only those of ``relations``)::

      {"subject": "France", "aliases": ["the French Republic"]}
      {"subject": "Wolfgang Amadeus Mozart", "aliases": ["Mozart"]}

  Countries have official long names and short forms, elements a few spelling variants and one old name
  (quicksilver), a few cities English exonyms, people their surnames or real names. Words of the word relations
  (opposite, plural, past tense, ...) have synonyms, not aliases: a synonym is another word with its own answer,
  so they get none; animals and colours neither.

:func:`validate_robustness` checks the file against the facts (every alias's subject has facts, reverse
templates have one [X] and the answer [Y] at the end, one-to-one facts repeat no subject or object).

Example:
    >>> data = robustness_data()
    >>> data.is_one_to_one(fact)                    # capital:France
    True
    >>> data.reverse_fact(fact, "Rome").prompts()[0].causal_text
    'Rome is the capital of'
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from kneuron.errors import FactError
from kneuron.facts.fact import OBJECT, SUBJECT, Fact, check_template

ROBUSTNESS_FILE = "robustness.jsonl"
#: the relation name of reversed facts: ``reverse:capital``
REVERSE_PREFIX = "reverse:"


@dataclass(frozen=True)
class OneToOne:
    """A relation whose facts (all, or those of ``subjects``) are one-to-one, and its reverse templates."""

    relation: str
    reverse_templates: tuple[str, ...]
    subjects: tuple[str, ...] | None = None  # None: every fact of the relation

    def covers(self, fact: Fact) -> bool:
        return fact.relation == self.relation and (self.subjects is None or fact.subject in self.subjects)


@dataclass(frozen=True)
class Aliases:
    """Other names of ``subject``, for its facts of ``relations`` (None: all of its facts)."""

    subject: str
    names: tuple[str, ...]
    relations: tuple[str, ...] | None = None

    def covers(self, fact: Fact) -> bool:
        return fact.subject == self.subject and (self.relations is None or fact.relation in self.relations)


@dataclass(frozen=True)
class RobustnessData:
    """The one-to-one relations (by name) and the aliases of the robustness tests."""

    one_to_one: Mapping[str, OneToOne] = field(default_factory=dict)
    aliases: tuple[Aliases, ...] = ()

    def is_one_to_one(self, fact: Fact) -> bool:
        entry = self.one_to_one.get(fact.relation)
        return entry is not None and entry.covers(fact)

    def one_to_one_facts(self, facts: Iterable[Fact]) -> list[Fact]:
        return [f for f in facts if self.is_one_to_one(f)]

    def aliases_of(self, fact: Fact) -> list[str]:
        """The fact's subject's other names, in file order (none for most facts)."""
        names = [name for entry in self.aliases if entry.covers(fact) for name in entry.names]
        return list(dict.fromkeys(n for n in names if n != fact.subject))

    def alias_facts(self, fact: Fact) -> list[Fact]:
        """The fact asked with each alias in its subject's place (same templates and answer)."""
        return [Fact(name, fact.relation, fact.object, fact.templates, id=f"{fact.id}~{name}")
                for name in self.aliases_of(fact)]

    def reverse_fact(self, fact: Fact, object_: str | None = None) -> Fact:
        """The reverse query "``object_`` is the capital of [Y]" answered by ``fact.subject`` (``object_``
        defaults to the fact's object; pass the new answer of an edit to ask the edited fact backwards).

        Raises:
            FactError: the fact's relation is not one-to-one here.
        """
        entry = self.one_to_one.get(fact.relation)
        if entry is None:
            raise FactError(f"Relation {fact.relation!r} has no reverse templates: it is not one of the one-to-one "
                            f"relations {sorted(self.one_to_one)}.")
        head = object_ or fact.object
        return Fact(head, REVERSE_PREFIX + fact.relation, fact.subject, entry.reverse_templates,
                    id=f"{REVERSE_PREFIX}{fact.relation}:{head}")

    def owners(self, facts: Iterable[Fact]) -> dict[tuple[str, str], str]:
        """(relation, object) -> subject over the one-to-one facts of ``facts``: who the reverse query names."""
        return {(f.relation, f.object): f.subject for f in self.one_to_one_facts(facts)}


def _tuple(value, what: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise FactError(f"{where}: {what} must be a non-empty list of non-empty strings, not {value!r}.")
    return tuple(value)


def parse_robustness(lines: Iterable[str], source: str = ROBUSTNESS_FILE) -> RobustnessData:
    """Read robustness records (see the module docstring) from JSON lines; FactError names a malformed line."""
    one_to_one: dict[str, OneToOne] = {}
    aliases: list[Aliases] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FactError(f"{where}: not JSON ({exc.msg}).") from None
        if not isinstance(record, dict):
            raise FactError(f"{where}: each line must be a JSON object, not {record!r}.")
        if "relation" in record and "subject" not in record:
            relation, flag = record["relation"], record.get("one_to_one")
            if relation in one_to_one:
                raise FactError(f"{where}: relation {relation!r} is declared twice.")
            if flag is not True and not isinstance(flag, list):
                raise FactError(f"{where}: one_to_one must be true or a list of subjects, not {flag!r}.")
            templates = _tuple(record.get("reverse_templates"), "reverse_templates", where)
            subjects = None if flag is True else _tuple(flag, "one_to_one", where)
            one_to_one[relation] = OneToOne(relation, templates, subjects)
        elif "subject" in record:
            relations = record.get("relations")
            aliases.append(Aliases(record["subject"], _tuple(record.get("aliases"), "aliases", where),
                                   None if relations is None else _tuple(relations, "relations", where)))
        else:
            raise FactError(f"{where}: a record is a one-to-one relation ('relation', 'one_to_one', "
                            "'reverse_templates') or aliases ('subject', 'aliases').")
    return RobustnessData(one_to_one, tuple(aliases))


@lru_cache(maxsize=1)
def robustness_data() -> RobustnessData:
    """The shipped robustness data (``facts/data/robustness.jsonl``)."""
    resource = resources.files("kneuron.facts").joinpath("data", ROBUSTNESS_FILE)
    with resources.as_file(resource) as path, path.open(encoding="utf-8") as handle:
        return parse_robustness(handle, str(path))


def validate_robustness(data: RobustnessData, facts: Sequence[Fact]) -> list[str]:
    """Problems of ``data`` against ``facts`` (e.g. the built-in set), one line each; empty when it is sound.

    Checks: every alias's subject has a fact (of each of its relations, when given) and no alias is empty, the
    subject itself, or given twice; every one-to-one relation has facts, its listed subjects have facts, and its
    one-to-one facts repeat no subject and no object; every reverse template has one [X] and ends with the
    answer [Y] (a causal model reads the text before it).
    """
    problems: list[str] = []
    by_subject: dict[str, set[str]] = {}
    for fact in facts:
        by_subject.setdefault(fact.subject, set()).add(fact.relation)
    for entry in data.aliases:
        relations = by_subject.get(entry.subject)
        if relations is None:
            problems.append(f"aliases of {entry.subject!r}: no fact has that subject.")
            continue
        for relation in entry.relations or ():
            if relation not in relations:
                problems.append(f"aliases of {entry.subject!r}: it has no {relation!r} fact.")
        for name, count in Counter(entry.names).items():
            if name == entry.subject or count > 1:
                problems.append(f"aliases of {entry.subject!r}: {name!r} is the subject itself or given twice.")
            if SUBJECT in name or OBJECT in name:
                problems.append(f"aliases of {entry.subject!r}: {name!r} contains a placeholder.")
    for relation, entry in data.one_to_one.items():
        own = [f for f in facts if f.relation == relation]
        if not own:
            problems.append(f"one-to-one relation {relation!r} has no facts.")
        for subject in entry.subjects or ():
            if not any(f.subject == subject for f in own):
                problems.append(f"one-to-one relation {relation!r}: no fact has the subject {subject!r}.")
        chosen = [f for f in own if entry.covers(f)]
        for what, values in (("subject", [f.subject for f in chosen]), ("object", [f.object for f in chosen])):
            repeated = sorted(v for v, n in Counter(values).items() if n > 1)
            if repeated:
                problems.append(f"one-to-one relation {relation!r}: the {what}(s) {repeated} occur twice.")
        for template in entry.reverse_templates:
            try:
                check_template(template)
            except FactError as exc:
                problems.append(f"reverse template of {relation!r}: {exc}")
                continue
            if template.count(SUBJECT) != 1 or not template.rstrip(" .?!").endswith(OBJECT):
                problems.append(f"reverse template {template!r} of {relation!r} needs one [X] (the object) and "
                                "must end with [Y] (the subject, answered).")
    return problems
