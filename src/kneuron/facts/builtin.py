"""The facts shipped with kneuron: everyday relations that a small English model can know.

They live in ``facts/data/builtin.jsonl`` (our JSONL schema, see :mod:`kneuron.facts.schema`): each relation
is declared once with its templates (answer ``[Y]`` at the end, so that causal models can read them) and
followed by its facts. ``facts/data/discrimination.jsonl`` holds, for part of the facts, sentences that state
the fact (they mention subject and object) and sentences that mention only the subject, for the paper's
discrimination study: ``{"fact": "capital:France", "positive": [...], "negative": [...]}``.

Example:
    >>> facts = builtin_facts(["capital"])
    >>> facts[0].prompts()[0].causal_text
    'The capital of France is'
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

from kneuron.errors import FactError
from kneuron.facts.fact import Fact
from kneuron.facts.schema import read_jsonl

FACTS_FILE = "builtin.jsonl"
DISCRIMINATION_FILE = "discrimination.jsonl"


def _data(name: str):
    return resources.files("kneuron.facts").joinpath("data", name)


@lru_cache(maxsize=1)
def _all_facts() -> tuple[Fact, ...]:
    with resources.as_file(_data(FACTS_FILE)) as path:
        return tuple(read_jsonl(path))


def builtin_relations() -> list[str]:
    """Names of the built-in relations, in file order."""
    return list(dict.fromkeys(fact.relation for fact in _all_facts()))


def builtin_facts(relations: Iterable[str] | None = None) -> list[Fact]:
    """The built-in facts, all of them or those of ``relations``.

    Raises:
        FactError: a relation name that the built-in set does not have.
    """
    facts = list(_all_facts())
    if relations is None:
        return facts
    wanted = list(dict.fromkeys(relations))
    unknown = [r for r in wanted if r not in builtin_relations()]
    if unknown:
        raise FactError(f"No built-in relation {', '.join(map(repr, unknown))}; choose from {builtin_relations()}.")
    return [fact for fact in facts if fact.relation in set(wanted)]


@lru_cache(maxsize=1)
def _discrimination() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    table = {}
    with resources.as_file(_data(DISCRIMINATION_FILE)) as path, path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                table[record["fact"]] = (tuple(record["positive"]), tuple(record["negative"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise FactError(f"{path}:{number}: malformed discrimination entry ({exc}).") from None
    return table


def discrimination_sentences(fact: Fact | str) -> tuple[list[str], list[str]]:
    """(sentences that state ``fact``, sentences that mention only its subject); empty lists when none are written.

    Positive sentences mention both subject and object ("Paris is the capital and largest city of France.");
    negative ones mention the subject but not the object ("France borders Spain and Belgium.").
    """
    key = fact if isinstance(fact, str) else fact.id
    positive, negative = _discrimination().get(key, ((), ()))
    return list(positive), list(negative)


def discrimination_facts() -> list[Fact]:
    """The built-in facts that have discrimination sentences."""
    table = _discrimination()
    return [fact for fact in _all_facts() if fact.id in table]
