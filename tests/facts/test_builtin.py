"""The built-in facts, their discrimination sentences, and known_facts (tiny models; one optional real-model test)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from kneuron.errors import FactError
from kneuron.facts import Fact, answer_probability
from kneuron.facts.builtin import builtin_facts, builtin_relations, discrimination_facts, discrimination_sentences
from kneuron.facts.known import answer_ranks, known_facts, known_share


def test_at_least_12_relations_with_20_facts_and_5_templates_each():
    relations = builtin_relations()
    assert len(relations) >= 12
    counts = Counter(f.relation for f in builtin_facts())
    assert all(counts[r] >= 20 for r in relations), counts
    for fact in builtin_facts():
        assert len(set(fact.templates)) >= 5, fact


def test_templates_suit_causal_models():
    for fact in builtin_facts():
        for template in fact.templates:
            assert template.count("[X]") == 1 and template.count("[Y]") == 1, template
            assert template.split("[Y]")[0].strip(), template  # text before the answer
            assert len(template.split("[Y]")[1].split()) <= 2, template  # the answer comes at (or near) the end


def test_ids_unique_and_relation_filter():
    facts = builtin_facts()
    assert len({f.id for f in facts}) == len(facts)
    assert len({(f.relation, f.subject) for f in facts}) == len(facts)
    capital = builtin_facts(["capital"])
    assert capital and all(f.relation == "capital" for f in capital)
    assert capital[0].prompts()[0].causal_text == "The capital of France is"
    with pytest.raises(FactError, match="No built-in relation 'capitals'"):
        builtin_facts(["capitals"])


def _mentions(sentence: str, name: str) -> bool:
    """``name`` (or its last word: "Mozart" for "Wolfgang Amadeus Mozart") as a whole word of ``sentence``."""
    return any(re.search(rf"\b{re.escape(n)}\b", sentence, re.IGNORECASE) for n in (name, name.split()[-1]))


def test_discrimination_sentences():
    facts = discrimination_facts()
    by_relation = Counter(f.relation for f in facts)
    assert len([r for r, n in by_relation.items() if n >= 10]) >= 4, by_relation
    for fact in facts:
        positive, negative = discrimination_sentences(fact)
        assert len(positive) >= 2 and len(negative) >= 2, fact.id
        for sentence in positive:
            assert _mentions(sentence, fact.subject) and _mentions(sentence, fact.object), sentence
        for sentence in negative:
            assert _mentions(sentence, fact.subject) and not _mentions(sentence, fact.object), sentence
    assert discrimination_sentences("capital:Atlantis") == ([], [])
    assert discrimination_sentences(facts[0]) == discrimination_sentences(facts[0].id)


# --------------------------------------------------------------------------------------------- known_facts

TINY_FACTS = [
    Fact("France", "capital", "Paris", ("The capital of [X] is [Y].", "[X]'s capital city is [Y].",
                                        "The capital city of [X] is [Y].")),
    Fact("Japan", "capital", "Tokyo", ("The capital of [X] is [Y].", "[X]'s capital is [Y].")),
    Fact("Denmark", "capital", "Copenhagen", ("The capital of [X] is [Y].", "In [X] the capital is [Y].")),
    Fact("Mozart", "job", "composer", ("[X] was a famous [Y].",)),
]


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_batched_ranks_equal_one_by_one(make_lm, family):
    lm = make_lm(family)
    ranks = answer_ranks(lm, TINY_FACTS, batch_size=2)
    expected = [[answer_probability(lm, p, f.object).rank for p in f.prompts()] for f in TINY_FACTS]
    assert ranks == expected


def test_known_facts_splits_on_share(make_lm):
    lm = make_lm("llama")
    ranks = answer_ranks(lm, TINY_FACTS)
    vocab = len(lm.tokenizer)
    kept, dropped = known_facts(lm, TINY_FACTS, top=vocab)  # everything ranks within the whole vocabulary
    assert kept == TINY_FACTS and dropped == []
    kept, dropped = known_facts(lm, TINY_FACTS, top=0)
    assert kept == [] and dropped == TINY_FACTS
    top = 20
    kept, _ = known_facts(lm, TINY_FACTS, top=top, min_share=0.5)
    assert kept == [f for f, r in zip(TINY_FACTS, ranks, strict=True) if known_share(r, top) > 0.5]


def test_known_facts_refuses_prompt_a_causal_model_cannot_read(make_lm):
    with pytest.raises(FactError, match="nothing before"):
        known_facts(make_lm("llama"), [Fact("France", "capital", "Paris", ("[Y] is the capital of [X].",))])


@pytest.mark.real_model
def test_smollm2_knows_the_capitals(smollm2):
    facts = builtin_facts(["capital"])[:8]
    kept, dropped = known_facts(smollm2, facts)
    assert len(kept) >= 7, [f.subject for f in dropped]  # all 32 capitals were known when the set was written
