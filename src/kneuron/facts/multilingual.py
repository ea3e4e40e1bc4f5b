"""The built-in multilingual facts: the same facts in English, French, German, Spanish and Chinese.

One fact in five languages is five :class:`~kneuron.facts.fact.Fact` values of one relation, with ids
``"{relation}:{EnglishSubject}@{language}"`` (the convention of :mod:`kneuron.facts.languages`):
``capital:France@fr`` asks "La capitale de la France est [Y]." and expects "Paris", ``capital:France@zh``
asks "法国的首都是[Y]。" and expects "巴黎". Each language has its own templates, written in that language
(not translated word for word), with the answer ``[Y]`` at the end so that causal models can read them; each
language has its own answers ("Londres", "Pékin", "Französisch", "francés", "法语"). ``chemical_symbol``
has the same answer in every language ("Fe"): a control whose answer does not depend on the language.

The data, ``facts/data/multilingual.jsonl``, has three kinds of lines (any order; ``//``/``#`` lines skipped)::

    {"entity": "France", "forms": {"fr": {"name": "la France", "of": "de la France", "in": "en France"},
                                   "de": {"name": "Frankreich", "of": "Frankreichs", "in": "in Frankreich"},
                                   "es": {"name": "Francia", "of": "de Francia", "in": "en Francia"},
                                   "zh": "法国"}}
    {"relation": "capital", "description": "capital city of a country",
     "templates": {"en": ["The capital of [X] is [Y]."], "fr": ["La capitale [X:of] est [Y]."], ...}}
    {"relation": "capital", "subject": "France", "objects": {"en": "Paris", "fr": "Paris", ..., "zh": "巴黎"}}

- An *entity* is a subject, named by its English name (the ``subject`` of its facts and of their ids). Its
  ``forms`` give, per language, how the subject is written: a string (its name) or an object with ``"name"``
  and further forms that templates ask for. French, German and Spanish need the article and case that the
  sentence gives the name: ``"name"`` is the subject as it stands in the sentence ("la France", "le Japon",
  "die Schweiz", "la India"), ``"of"`` the form after "the capital of" ("de la France", "du Japon",
  "Frankreichs", "der Schweiz", "del hierro"), ``"in"`` the form for "in" ("en France", "au Japon",
  "in der Schweiz", "en la India"). English needs no forms: its name is the entity (``"en"`` may override it).
  Other keys (``"kind"``) are ignored.
- A *relation* line declares the relation's templates per language. A template has exactly one subject slot,
  ``[X]`` (the name) or ``[X:form]`` (that form), and exactly one ``[Y]`` after it. A slot that starts the
  sentence gets its first letter capitalized ("[X] a pour capitale [Y]." → "La France a pour capitale").
- A *fact* line gives the answer in every language its relation has templates for (no more, no fewer).

Each Fact's templates come with the subject already written in (no ``[X]`` left: the form differs from
template to template); ``Fact.subject`` is the language's ``"name"`` form. Malformed data raises
:class:`~kneuron.errors.FactError` naming the file and line; :func:`read_multilingual` reads a file of this
schema (``load_facts`` recognizes one by its ``"entity"``, ``"objects"`` or per-language ``"templates"``).

Example:
    >>> facts = multilingual_facts(["fr"], ["capital"])
    >>> facts[0].id, facts[0].prompts()[0].causal_text, facts[0].object
    ('capital:France@fr', 'La capitale de la France est', 'Paris')
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from kneuron.errors import FactError
from kneuron.facts.fact import OBJECT, Fact
from kneuron.facts.languages import LANGUAGE_NAMES, language_of, with_language
from kneuron.facts.records import json_lines, location, string_field

MULTILINGUAL_FILE = "multilingual.jsonl"

#: a subject slot in a template: ``[X]`` (the name) or ``[X:form]``
SLOT = re.compile(r"\[X(?::([A-Za-z_]+))?\]")
_CODE = re.compile(r"^[a-z]{2,3}(?:-[A-Za-z]{2,4})?$")


@dataclass(frozen=True)
class _Relation:
    templates: dict[str, tuple[str, ...]]
    where: str


def _forms(value: object, entity: str, language: str, where: str) -> dict[str, str]:
    """One language's forms of an entity: ``{"name": ..., other forms}``."""
    forms = {"name": value} if isinstance(value, str) else value
    if not isinstance(forms, dict) or "name" not in forms:
        raise FactError(f"{where}: entity {entity!r}, language {language!r}: give a name (a string) or an object "
                        f"with \"name\" and other forms, e.g. {{\"name\": \"la France\", \"of\": \"de la France\"}}.")
    for form, text in forms.items():
        if not isinstance(text, str) or not text.strip():
            raise FactError(f"{where}: entity {entity!r}, language {language!r}: form {form!r} must be a non-empty "
                            f"string, got {text!r}.")
    return dict(forms)


def _language(code: object, where: str) -> str:
    if not isinstance(code, str) or not _CODE.match(code):
        raise FactError(f"{where}: {code!r} is not a language code (ISO 639-1, e.g. 'fr', 'zh').")
    return code


def _check_template(template: object, relation: str, language: str, where: str) -> str:
    if not isinstance(template, str):
        raise FactError(f"{where}: a {language!r} template of relation {relation!r} is {template!r}, not a string.")
    slots = SLOT.findall(template)
    if len(slots) != 1 or template.count(OBJECT) != 1:
        raise FactError(f"{where}: template {template!r} ({relation}, {language}) needs exactly one subject slot "
                        f"([X] or [X:form]) and one [Y]; it has {len(slots)} and {template.count(OBJECT)}.")
    if SLOT.search(template).start() > template.index(OBJECT):
        raise FactError(f"{where}: template {template!r} ({relation}, {language}) puts [Y] before the subject: "
                        "a causal model reads only the text before [Y], so put the answer last.")
    return template


def _fill(template: str, forms: dict[str, str]) -> str | None:
    """``template`` with its slot replaced by the subject's form (capitalized at the start); None if it lacks it."""
    slot = SLOT.search(template)
    text = forms.get(slot.group(1) or "name")
    if text is None:
        return None
    if slot.start() == 0:
        text = text[0].upper() + text[1:]
    return template[:slot.start()] + text + template[slot.end():]


def read_multilingual(path: str | Path) -> list[Fact]:
    """The facts of a multilingual file (the schema in the module docstring), fact by fact, languages in order.

    Raises:
        FactError: a malformed line, an unknown entity or relation, a fact without an answer in one of its
            relation's languages, or a template asking for a form its subject does not have.
    """
    path = Path(path)
    entities: dict[str, dict[str, dict[str, str]]] = {}
    relations: dict[str, _Relation] = {}
    pending: list[tuple[str, str, str, dict[str, str]]] = []
    for number, record in json_lines(path):
        where = location(path, number)
        if "entity" in record:
            entity = string_field(record, "entity", where)
            if entity in entities:
                raise FactError(f"{where}: entity {entity!r} is declared twice.")
            raw = record.get("forms", {})
            if not isinstance(raw, dict):
                raise FactError(f"{where}: 'forms' of entity {entity!r} must map languages to names or forms.")
            forms = {_language(code, where): _forms(value, entity, code, where) for code, value in raw.items()}
            forms.setdefault("en", {"name": entity})
            entities[entity] = forms
            continue
        relation = string_field(record, "relation", where)
        if "subject" not in record:
            templates = record.get("templates")
            if not isinstance(templates, dict) or not templates:
                raise FactError(f"{where}: relation {relation!r} needs 'templates': an object language -> list of "
                                "templates.")
            if relation in relations:
                raise FactError(f"{where}: relation {relation!r} is declared twice.")
            checked = {}
            for code, listed in templates.items():
                code = _language(code, where)
                if not isinstance(listed, list) or not listed:
                    raise FactError(f"{where}: relation {relation!r}, language {code!r}: give a non-empty list of "
                                    "templates.")
                checked[code] = tuple(_check_template(t, relation, code, where) for t in listed)
            relations[relation] = _Relation(checked, where)
            continue
        subject = string_field(record, "subject", where)
        objects = record.get("objects")
        if not isinstance(objects, dict) or not objects:
            raise FactError(f"{where}: fact {relation}:{subject} needs 'objects': an object language -> answer.")
        answers = {_language(code, where): string_field(objects, code, where) for code in objects}
        pending.append((where, relation, subject, answers))
    return _resolve(path, entities, relations, pending)


def _resolve(path: Path, entities: dict[str, dict[str, dict[str, str]]], relations: dict[str, _Relation],
             pending: list[tuple[str, str, str, dict[str, str]]]) -> list[Fact]:
    facts, seen = [], set()
    for where, relation, subject, answers in pending:
        if relation not in relations:
            raise FactError(f"{where}: relation {relation!r} is not declared in {path}: add a line "
                            f'{{"relation": "{relation}", "templates": {{"en": [...], ...}}}}.')
        if subject not in entities:
            raise FactError(f"{where}: no entity {subject!r} in {path}: declare it with a line "
                            f'{{"entity": "{subject}", "forms": {{...}}}}.')
        key = f"{relation}:{subject}"
        if key in seen:
            raise FactError(f"{where}: fact {key} is given twice.")
        seen.add(key)
        templates = relations[relation].templates
        if set(answers) != set(templates):
            missing, extra = sorted(set(templates) - set(answers)), sorted(set(answers) - set(templates))
            raise FactError(f"{where}: fact {key} must have an answer in each language of its relation "
                            f"({', '.join(templates)}); missing {missing or 'none'}, without templates "
                            f"{extra or 'none'}.")
        for language, language_templates in templates.items():
            forms = entities[subject].get(language)
            if forms is None:
                raise FactError(f"{where}: entity {subject!r} has no {language!r} name; add it to its 'forms'.")
            filled = []
            for template in language_templates:
                text = _fill(template, forms)
                if text is None:
                    form = SLOT.search(template).group(1)
                    raise FactError(f"{where}: template {template!r} needs the {language!r} form {form!r} of "
                                    f"{subject!r}, which its entity line does not give.")
                filled.append(text)
            try:
                facts.append(Fact(forms["name"], relation, answers[language], tuple(filled),
                                  id=with_language(key, language)))
            except FactError as exc:
                raise FactError(f"{where}: {exc}") from None
    return facts


# ----------------------------------------------------------------------------------------------- built-in set


@lru_cache(maxsize=1)
def _all_facts() -> tuple[Fact, ...]:
    data = resources.files("kneuron.facts").joinpath("data", MULTILINGUAL_FILE)
    with resources.as_file(data) as path:
        return tuple(read_multilingual(path))


def multilingual_relations() -> list[str]:
    """The relations of the built-in multilingual set, in file order."""
    return list(dict.fromkeys(fact.relation for fact in _all_facts()))


def multilingual_languages() -> list[str]:
    """The language codes of the built-in multilingual set (those of :data:`LANGUAGE_NAMES`), in file order."""
    return list(dict.fromkeys(language_of(fact) for fact in _all_facts()))


def multilingual_facts(languages: Iterable[str] | None = None, relations: Iterable[str] | None = None
                       ) -> list[Fact]:
    """The built-in multilingual facts, all of them or those in ``languages`` and of ``relations``.

    Raises:
        FactError: a language or relation that the set does not have.
    """
    facts = list(_all_facts())
    if relations is not None:
        wanted = list(dict.fromkeys(relations))
        unknown = [r for r in wanted if r not in multilingual_relations()]
        if unknown:
            raise FactError(f"No multilingual relation {', '.join(map(repr, unknown))}; choose from "
                            f"{', '.join(multilingual_relations())}.")
        facts = [fact for fact in facts if fact.relation in set(wanted)]
    if languages is not None:
        facts = select_languages(facts, languages, source="the multilingual facts")
    return facts


def parse_languages(value: str | Iterable[str]) -> list[str]:
    """``"en, fr"`` → ``["en", "fr"]`` (also a list of codes); FactError for an empty list or a malformed code."""
    codes = [c.strip() for c in value.split(",")] if isinstance(value, str) else [str(c).strip() for c in value]
    if not any(codes):
        raise FactError(f"No language given: name one or more codes, e.g. 'en,fr' ({_known_codes()}).")
    if not all(codes):  # 'en,,fr' or 'en,': a code left out (a typo), not silently dropped
        raise FactError(f"{value if isinstance(value, str) else ','.join(codes)!r} has an empty language code: "
                        "separate codes by single commas, e.g. 'en,fr'.")
    codes = list(dict.fromkeys(codes))
    bad = [c for c in codes if not _CODE.match(c)]
    if bad:
        raise FactError(f"{', '.join(map(repr, bad))} is not a language code: use ISO 639-1 codes such as "
                        f"{_known_codes()}.")
    return codes


def _known_codes() -> str:
    return ", ".join(f"{code} ({name})" for code, name in LANGUAGE_NAMES.items())


def select_languages(facts: Sequence[Fact], languages: str | Iterable[str], source: str = "the facts"
                     ) -> list[Fact]:
    """The facts whose id names one of ``languages`` (``"en,fr"`` or a list of codes), in their order.

    Raises:
        FactError: a code that no fact of ``facts`` has (the message lists those it has), or facts without
            languages at all (e.g. the English built-in set: use ``multilingual``).
    """
    codes = parse_languages(languages)
    present = list(dict.fromkeys(code for fact in facts if (code := language_of(fact)) is not None))
    if not present:
        raise FactError(f"{source} has no facts tagged with a language (ids such as 'capital:France@fr'); for "
                        "facts in several languages use --facts multilingual.")
    unknown = [c for c in codes if c not in present]
    if unknown:
        named = ", ".join(f"{c} ({LANGUAGE_NAMES[c]})" if c in LANGUAGE_NAMES else c for c in present)
        raise FactError(f"No facts in language {', '.join(map(repr, unknown))} in {source}; its languages: {named}.")
    return [fact for fact in facts if language_of(fact) in set(codes)]
