"""How a fact's language is named: the id convention shared by multilingual facts, runs and studies.

One fact in several languages is several :class:`~kneuron.facts.fact.Fact` values, one per language, with the
same relation and ids ``"{relation}:{subject}@{language}"`` (the subject as the English fact spells it, the
language an ISO 639-1 code): ``"capital:France@fr"`` is France's capital in French ("Paris"),
``"capital:Germany@es"`` Germany's in Spanish ("Berlín"). :func:`fact_key` drops the language, so the versions
of one fact share a key; a fact without a language suffix has no language (:func:`language_of` is None).

Example:
    >>> language_of("capital:France@fr"), fact_key("capital:France@fr")
    ('fr', 'capital:France')
"""

from __future__ import annotations

import re

from kneuron.facts.fact import Fact

#: the languages the built-in multilingual set is written in, with their English names
LANGUAGE_NAMES: dict[str, str] = {"en": "English", "fr": "French", "de": "German", "es": "Spanish",
                                  "zh": "Chinese"}

_SUFFIX = re.compile(r"@([a-z]{2,3}(?:-[A-Za-z]{2,4})?)$")


def _id_of(fact: Fact | str) -> str:
    return fact if isinstance(fact, str) else fact.id


def language_of(fact: Fact | str) -> str | None:
    """The language code at the end of a fact's id (``"...@fr"`` → ``"fr"``), or None when it has none."""
    found = _SUFFIX.search(_id_of(fact))
    return found.group(1) if found else None


def fact_key(fact: Fact | str) -> str:
    """A fact's id without its language suffix: the same for every language version of one fact."""
    return _SUFFIX.sub("", _id_of(fact))


def with_language(key: str, language: str) -> str:
    """The id of ``key``'s version in ``language`` (``"capital:France", "fr"`` → ``"capital:France@fr"``)."""
    return f"{key}@{language}"


def in_several_languages(facts: list[Fact], min_languages: int = 2) -> list[Fact]:
    """The facts whose key has versions in at least ``min_languages`` languages among ``facts`` (in their order),
    e.g. the facts a model knows (:func:`kneuron.facts.known_facts`) that it knows in two languages or more; facts
    without a language never count."""
    languages: dict[str, set[str]] = {}
    for fact in facts:
        code = language_of(fact)
        if code is not None:
            languages.setdefault(fact_key(fact), set()).add(code)
    return [fact for fact in facts
            if language_of(fact) is not None and len(languages[fact_key(fact)]) >= min_languages]
