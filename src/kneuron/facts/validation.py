"""Which facts a model kind can use, checked once for every command that reads a facts set.

:func:`validate_facts` is the one check that ``kneuron facts``, ``kneuron run`` and the library share, so
that a facts set one of them refuses is refused by the others with the same message.

Example:
    >>> usable = validate_facts(load_facts("facts.jsonl"), causal=True, source="facts.jsonl")
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from kneuron.errors import FactError
from kneuron.facts.fact import CAUSAL_HOW, OBJECT, SUBJECT, Fact


def causal_template(template: str) -> bool:
    """Whether a causal LM can read ``template``: the subject [X] (or, without [X], some text) comes before [Y]."""
    before = template.split(OBJECT)[0]
    return SUBJECT in before if SUBJECT in template else bool(before.strip())


def causal_templates(facts: Iterable[Fact]) -> list[Fact]:
    """Keep only the templates a causal LM can use; drop facts left with none.

    A causal LM reads only the text before ``[Y]``, so the subject ``[X]`` must come before it. PARAREL has
    patterns such as ``"[Y] is the capital of [X] ."`` or ``"The capital of [Y] is [X] ."`` that only a masked
    LM can use.
    """
    kept = []
    for fact in facts:
        templates = tuple(t for t in fact.templates if causal_template(t))
        if templates:
            kept.append(fact if templates == fact.templates else replace(fact, templates=templates))
    return kept


def validate_facts(facts: Sequence[Fact], *, causal: bool, relations: Iterable[str] | None = None,
                   source: str = "the facts") -> list[Fact]:
    """The facts a model of this kind can use, or a FactError saying why there are none.

    Args:
        facts: the facts as loaded (all relations: the error for a missing relation lists the others).
        causal: the model is causal: keep only the templates with the subject before ``[Y]``
            (:func:`causal_templates`); facts left without any are dropped.
        relations: keep only these relations; each must have facts in ``facts``.
        source: how to name the set in messages (a path, ``"builtin"``).

    Raises:
        FactError: a relation with no facts, an empty set, or (causal) no template a causal model can read.
    """
    if relations is not None:
        wanted = list(dict.fromkeys(relations))
        present = {fact.relation for fact in facts}
        missing = [r for r in wanted if r not in present]
        if missing:
            raise FactError(f"No facts of relation {', '.join(map(repr, missing))} in {source}; its relations: "
                            f"{', '.join(sorted(present)) or 'none'}.")
        facts = [fact for fact in facts if fact.relation in set(wanted)]
    if not facts:
        raise FactError(f"{source} holds no facts.")
    if not causal:
        return list(facts)
    usable = causal_templates(facts)
    if not usable:
        example = next(t for fact in facts for t in fact.templates)
        raise FactError(f"None of the facts in {source} has a template that a causal model can read (e.g. "
                        f"{example!r}): {CAUSAL_HOW}.")
    return usable
