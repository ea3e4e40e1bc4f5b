"""The robustness data (facts/data/robustness.jsonl): one-to-one relations with reverse templates, and aliases;
validated against the built-in facts, and each check of validate_robustness shown to fire."""

from __future__ import annotations

from collections import Counter

import pytest

from kneuron.errors import FactError
from kneuron.facts import Fact, builtin_facts
from kneuron.facts.robustness import (
    Aliases,
    OneToOne,
    RobustnessData,
    parse_robustness,
    robustness_data,
    validate_robustness,
)


def fact(fact_id: str) -> Fact:
    return next(f for f in builtin_facts() if f.id == fact_id)


def test_the_shipped_data_is_sound_against_the_builtin_facts():
    data = robustness_data()
    assert validate_robustness(data, builtin_facts()) == []
    assert set(data.one_to_one) == {"capital", "chemical_symbol", "currency"}
    for relation, entry in data.one_to_one.items():
        assert len(entry.reverse_templates) >= 4
        for template in entry.reverse_templates:
            assert template.count("[X]") == 1 and template.count("[Y]") == 1 and template.endswith("[Y].")
        chosen = data.one_to_one_facts(builtin_facts([relation]))
        assert chosen
        assert max(Counter(f.object for f in chosen).values()) == 1  # the reverse query has one answer
        assert max(Counter(f.subject for f in chosen).values()) == 1
    for entry in data.aliases:  # every alias's fact exists
        assert any(f.subject == entry.subject for f in builtin_facts()), entry


def test_shared_currencies_are_not_one_to_one():
    data = robustness_data()
    assert data.is_one_to_one(fact("currency:Japan")) and data.is_one_to_one(fact("currency:Poland"))
    for shared in ("currency:France", "currency:Canada", "currency:Norway", "currency:Mexico", "currency:Russia"):
        assert not data.is_one_to_one(fact(shared)), shared  # euro, dollar, krone, peso; the ruble has a namesake
    assert data.is_one_to_one(fact("capital:France")) and data.is_one_to_one(fact("chemical_symbol:gold"))
    assert not data.is_one_to_one(fact("language:France"))


def test_reverse_fact_asks_the_object_and_answers_the_subject():
    data = robustness_data()
    france = fact("capital:France")
    reverse = data.reverse_fact(france)
    assert reverse.prompts()[0].causal_text == "Paris is the capital of" and reverse.object == "France"
    edited = data.reverse_fact(france, "Rome")
    assert edited.prompts()[0].causal_text == "Rome is the capital of" and edited.object == "France"
    assert data.reverse_fact(fact("currency:Japan")).prompts()[0].causal_text == "The yen is the currency of"
    with pytest.raises(FactError, match="not one of the one-to-one relations"):
        data.reverse_fact(fact("language:France"))
    assert data.owners(builtin_facts())[("capital", "Rome")] == "Italy"
    assert ("currency", "euro") not in data.owners(builtin_facts())


def test_aliases_replace_the_subject_in_every_template():
    data = robustness_data()
    uk = fact("currency:the United Kingdom")
    assert data.aliases_of(uk) == ["the UK", "Britain", "Great Britain"]
    alias = data.alias_facts(uk)[0]
    assert alias.object == "pound" and alias.templates == uk.templates
    assert alias.prompts()[0].causal_text == "The currency of the UK is the"
    assert data.aliases_of(fact("opposite:hot")) == []  # words have synonyms, not aliases
    assert data.aliases_of(fact("chemical_symbol:mercury")) == ["quicksilver"]


def test_validation_names_each_problem():
    facts = [Fact("France", "capital", "Paris", ("The capital of [X] is [Y].",)),
             Fact("Italy", "capital", "Paris", ("The capital of [X] is [Y].",)),
             Fact("France", "language", "French", ("In [X] they speak [Y].",))]
    data = RobustnessData(
        {"capital": OneToOne("capital", ("[X] is the capital of [Y].", "The capital is [Y] [X].", "Only [Y].")),
         "currency": OneToOne("currency", ("The [X] is used in [Y].",), ("Japan",))},
        (Aliases("Atlantis", ("the lost island",)), Aliases("France", ("France", "la France", "la France")),
         Aliases("France", ("the French Republic",), ("capital", "demonym"))))
    problems = "\n".join(validate_robustness(data, facts))
    assert "the object(s) ['Paris'] occur twice" in problems
    assert "reverse template 'The capital is [Y] [X].'" in problems and "reverse template 'Only [Y].'" in problems
    assert "'currency' has no facts" in problems and "no fact has the subject 'Japan'" in problems
    assert "aliases of 'Atlantis': no fact has that subject" in problems
    assert "'France' is the subject itself or given twice" in problems and "'la France' is the subject" in problems
    assert "aliases of 'France': it has no 'demonym' fact" in problems
    assert len(problems.splitlines()) == 9
    sound = RobustnessData({"capital": OneToOne("capital", ("[X] is the capital of [Y].",), ("France",))},
                           (Aliases("France", ("the French Republic",), ("capital",)),))
    assert validate_robustness(sound, facts) == []


def test_parse_refuses_malformed_lines_in_one_line():
    good = parse_robustness(['{"relation": "capital", "one_to_one": true, "reverse_templates": ["[X] is [Y]."]}',
                             "", '{"subject": "France", "aliases": ["the French Republic"]}'])
    assert good.one_to_one["capital"].subjects is None and good.aliases[0].names == ("the French Republic",)
    for line, message in (("{", "not JSON"), ("[1]", "must be a JSON object"),
                          ('{"relation": "capital", "reverse_templates": ["[X] [Y]"]}', "one_to_one must be"),
                          ('{"relation": "capital", "one_to_one": true, "reverse_templates": []}',
                           "reverse_templates must be a non-empty list"),
                          ('{"subject": "France", "aliases": "the French Republic"}', "aliases must be"),
                          ('{"name": "x"}', "a record is a one-to-one relation")):
        with pytest.raises(FactError, match=message) as info:
            parse_robustness([line], "test.jsonl")
        assert str(info.value).startswith("test.jsonl:1:") and "\n" not in str(info.value)
    twice = '{"relation": "capital", "one_to_one": true, "reverse_templates": ["[X] is [Y]."]}'
    with pytest.raises(FactError, match="test.jsonl:2: relation 'capital' is declared twice"):
        parse_robustness([twice, twice], "test.jsonl")
