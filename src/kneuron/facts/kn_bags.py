"""The data of the official knowledge-neurons code (Dai et al. 2022, github.com/Hunter-DDM/knowledge-neurons):
PARAREL prompts grouped in bags, one bag per fact (:func:`read_kn_bags`)."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from kneuron.errors import FactError
from kneuron.facts.fact import OBJECT, SUBJECT, Fact
from kneuron.facts.records import location, make_fact

#: the mask the bags' sentences put where the answer goes
MASK = "[MASK]"
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
        raise FactError(f"{location(path, exc.lineno)}: malformed JSON ({exc.msg}, column {exc.colno}).") from None
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
        facts.append(make_fact(where, subject=subject, relation=relation, object=answer, templates=templates))
    return facts
