"""The built-in multilingual facts: their shape, ids, subject forms, templates, the reader's errors, filtering."""

from __future__ import annotations

import json
from collections import defaultdict
from importlib import resources

import pytest

from kneuron.errors import FactError
from kneuron.facts import builtin_facts, load_facts, multilingual_facts, read_multilingual, select_languages
from kneuron.facts.fact import OBJECT, SUBJECT
from kneuron.facts.languages import LANGUAGE_NAMES, fact_key, language_of, with_language
from kneuron.facts.multilingual import multilingual_languages, multilingual_relations, parse_languages
from kneuron.facts.validation import causal_templates

LANGUAGES = list(LANGUAGE_NAMES)


def _records() -> list[dict]:
    text = resources.files("kneuron.facts").joinpath("data", "multilingual.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _entities() -> dict[str, dict]:
    return {r["entity"]: r["forms"] for r in _records() if "entity" in r}


# ------------------------------------------------------------------------------------------------ the set


def test_every_fact_is_in_all_five_languages_with_conventional_ids():
    facts = multilingual_facts()
    by_key = defaultdict(list)
    for fact in facts:
        by_key[fact_key(fact)].append(language_of(fact))
        relation, subject = fact_key(fact).split(":", 1)
        assert fact.relation == relation
        assert fact.id == with_language(f"{relation}:{subject}", language_of(fact))
    assert all(languages == LANGUAGES for languages in by_key.values()), by_key
    assert multilingual_languages() == LANGUAGES
    assert len(facts) == 5 * len(by_key)
    english = [f for f in facts if language_of(f) == "en"]
    assert all(fact_key(f) == f"{f.relation}:{f.subject}" for f in english)  # the id names the English subject


def test_size_relations_and_templates():
    facts = multilingual_facts()
    relations = multilingual_relations()
    assert len(relations) >= 6
    for relation in relations:
        for language in LANGUAGES:
            group = [f for f in facts if f.relation == relation and language_of(f) == language]
            assert 8 <= len(group) <= 12, (relation, language)
            assert all(3 <= len(f.templates) <= 5 for f in group), (relation, language)
    # English relation names are those of the English built-in set, so the two can be compared
    assert set(relations) <= {f.relation for f in builtin_facts()}


def test_templates_are_filled_causal_and_end_with_the_answer():
    facts = multilingual_facts()
    assert causal_templates(facts) == facts  # a causal model can read every template
    for fact in facts:
        for template, prompt in zip(fact.templates, fact.prompts(), strict=True):
            assert SUBJECT not in template and "[X:" not in template and template.count(OBJECT) == 1
            assert prompt.suffix in (".", "。"), (fact.id, template)  # [Y] ends the sentence
            assert prompt.prefix[0] == prompt.prefix[0].upper(), (fact.id, template)  # a sentence starts upper
            # Chinese writes no space before the answer; the others do, except after an elided "d'"
            expect_space = language_of(fact) != "zh" and not prompt.prefix.endswith("'")
            assert prompt.space == expect_space, (fact.id, template)


def test_each_language_has_its_own_wording():
    facts = multilingual_facts()
    english_prompts = {p.causal_text for f in facts if language_of(f) == "en" for p in f.prompts()}
    for fact in facts:
        if language_of(fact) != "en":
            assert not {p.causal_text for p in fact.prompts()} & english_prompts, fact.id


def test_answers():
    facts = {f.id: f for f in multilingual_facts()}
    assert facts["capital:England@fr"].object == "Londres"
    assert facts["capital:Italy@de"].object == "Rom" and facts["capital:Italy@es"].object == "Roma"
    assert facts["capital:China@fr"].object == "Pékin" and facts["capital:France@zh"].object == "巴黎"
    assert facts["language:France@de"].object == "Französisch" and facts["language:France@es"].object == "francés"
    assert facts["language:France@zh"].object == "法语"
    assert facts["capital:France@fr"].prompts()[0].causal_text == "La capitale de la France est"
    assert facts["capital:France@zh"].prompts()[0].causal_text == "法国的首都是"
    # the control: a chemical symbol is the same in every language, other answers are not
    symbols = [f for f in facts.values() if f.relation == "chemical_symbol"]
    for key in {fact_key(f) for f in symbols}:
        assert len({facts[with_language(key, code)].object for code in LANGUAGES}) == 1
    capitals = [f for f in facts.values() if f.relation == "capital" and language_of(f) == "en"]
    assert sum(len({facts[with_language(fact_key(f), c)].object for c in LANGUAGES}) > 1 for f in capitals) >= 8


def test_subject_forms_follow_the_article_rules():
    """French de+le = du, à+le = au; Spanish de+el = del; German genitive/dative of 'die'; checked on the data."""
    checked = 0
    for entity, forms in _entities().items():
        fr, es, de = forms["fr"], forms["es"], forms["de"]
        if isinstance(fr, dict) and "of" in fr:
            name = fr["name"]
            bare = name.split(" ", 1)[1] if name.startswith(("le ", "la ")) else name[2:]
            assert name.startswith(("le ", "la ", "l'")), entity
            assert fr["of"] == ("du " + bare if name.startswith("le ") else "de " + name), entity
            if "in" in fr:
                assert fr["in"] == ("au " + bare if name.startswith("le ") else "en " + bare), entity
            checked += 1
        if isinstance(es, dict) and "of" in es:
            name = es["name"]
            assert es["of"] == ("del " + name[3:] if name.startswith("el ") else "de " + name), entity
            if "in" in es:
                assert es["in"] == "en " + name, entity
        if isinstance(de, dict):
            name = de["name"]
            if name.startswith("die "):
                assert (de["of"], de["in"]) == ("der " + name[4:], "in der " + name[4:]), entity
            else:
                assert de["in"] == "in " + name and de["of"].startswith(name[:3]) and de["of"].endswith("s"), entity
    assert checked >= 30


def test_chinese_has_no_latin_subjects_and_every_language_its_own_name():
    for entity, forms in _entities().items():
        assert set(forms) == {"fr", "de", "es", "zh"}, entity
        zh = forms["zh"]
        assert isinstance(zh, str) and all("\u4e00" <= ch <= "\u9fff" for ch in zh), entity


# ---------------------------------------------------------------------------------------------- filtering


def test_language_and_relation_filters():
    every = multilingual_facts()
    french = multilingual_facts(["fr"])
    assert french == [f for f in every if language_of(f) == "fr"] and len(french) == len(every) // 5
    some = multilingual_facts("zh, fr", ["capital"])
    assert some == [f for f in every if f.relation == "capital" and language_of(f) in ("fr", "zh")]
    assert select_languages(every, ["de"]) == multilingual_facts(["de"])


@pytest.mark.parametrize(("languages", "message"), [
    ("it", "No facts in language 'it' in the multilingual facts; its languages: en (English), fr (French)"),
    ("en,klingon", "'klingon' is not a language code"),
    (" , ", "No language given"),
])
def test_unknown_language_is_one_clear_error(languages, message):
    with pytest.raises(FactError, match=message.replace("(", r"\(").replace(")", r"\)")):
        multilingual_facts(languages)


def test_unknown_relation_and_facts_without_languages():
    with pytest.raises(FactError, match="No multilingual relation 'plural'; choose from capital, language"):
        multilingual_facts(relations=["plural"])
    with pytest.raises(FactError, match="builtin has no facts tagged with a language.*--facts multilingual"):
        select_languages(builtin_facts(), "fr", source="builtin")
    assert parse_languages(["fr", "fr", "zh"]) == ["fr", "zh"]


def test_load_facts_multilingual():
    assert load_facts("multilingual") == multilingual_facts()
    assert load_facts("multilingual", relations=["currency"]) == multilingual_facts(relations=["currency"])


# ------------------------------------------------------------------------------------------ reader, schema

SMALL = [
    {"entity": "France", "forms": {"fr": {"name": "la France", "of": "de la France"}, "zh": "法国"}},
    {"entity": "Japan", "kind": "country", "forms": {"fr": {"name": "le Japon", "of": "du Japon"}, "zh": "日本"}},
    {"relation": "capital", "templates": {"en": ["The capital of [X] is [Y]."],
                                          "fr": ["La capitale [X:of] est [Y].", "[X] a pour capitale [Y]."],
                                          "zh": ["[X]的首都是[Y]。"]}},
    {"relation": "capital", "subject": "France", "objects": {"en": "Paris", "fr": "Paris", "zh": "巴黎"}},
    {"relation": "capital", "subject": "Japan", "objects": {"en": "Tokyo", "fr": "Tokyo", "zh": "东京"}},
]


def _write(tmp_path, records, name="ml.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_reader_fills_forms_and_capitalizes_a_leading_subject(tmp_path):
    facts = read_multilingual(_write(tmp_path, SMALL))
    assert [f.id for f in facts] == ["capital:France@en", "capital:France@fr", "capital:France@zh",
                                    "capital:Japan@en", "capital:Japan@fr", "capital:Japan@zh"]
    japan_fr = facts[4]
    assert japan_fr.subject == "le Japon" and japan_fr.object == "Tokyo"
    assert japan_fr.templates == ("La capitale du Japon est [Y].", "Le Japon a pour capitale [Y].")
    assert facts[2].templates == ("法国的首都是[Y]。",) and facts[2].subject == "法国"
    assert facts[0].templates == ("The capital of France is [Y].",)  # English names default to the entity
    assert load_facts(_write(tmp_path, SMALL)) == facts  # load_facts recognizes the schema
    assert load_facts(_write(tmp_path, SMALL[2:] + SMALL[:2], "reordered.jsonl")) == facts


def _replace(index, record):
    return [record if i == index else r for i, r in enumerate(SMALL)]


@pytest.mark.parametrize(("records", "message"), [
    (SMALL[1:], r"ml.jsonl:3: no entity 'France' in .*: declare it"),
    (SMALL[:2] + SMALL[3:], r"ml.jsonl:3: relation 'capital' is not declared"),
    (_replace(3, {"relation": "capital", "subject": "France", "objects": {"en": "Paris", "fr": "Paris"}}),
     r"ml.jsonl:4: fact capital:France must have an answer in each language .*missing \['zh'\]"),
    (_replace(3, {"relation": "capital", "subject": "France",
                  "objects": {"en": "Paris", "fr": "Paris", "zh": "巴黎", "de": "Paris"}}),
     r"without templates \['de'\]"),
    (_replace(1, {"entity": "Japan", "forms": {"fr": "le Japon", "zh": "日本"}}),
     r"ml.jsonl:5: template 'La capitale \[X:of\] est \[Y\].' needs the 'fr' form 'of' of 'Japan'"),
    (_replace(1, {"entity": "Japan", "forms": {"fr": {"of": "du Japon"}, "zh": "日本"}}),
     r"ml.jsonl:2: entity 'Japan', language 'fr': give a name"),
    (_replace(1, {"entity": "Japan", "forms": {"fr": {"name": "le Japon", "of": "du Japon"}}}),
     r"entity 'Japan' has no 'zh' name"),
    (_replace(2, {"relation": "capital", "templates": {"en": ["[Y] is the capital of [X]."]}}),
     r"ml.jsonl:3: template .* puts \[Y\] before the subject"),
    (_replace(2, {"relation": "capital", "templates": {"en": ["[X] and [X:of] have the capital [Y]."]}}),
     r"needs exactly one subject slot .*it has 2 and 1"),
    (_replace(2, {"relation": "capital", "templates": {"english": ["The capital of [X] is [Y]."]}}),
     r"'english' is not a language code"),
    (_replace(2, {"relation": "capital", "templates": ["The capital of [X] is [Y]."]}),
     r"ml.jsonl:3: relation 'capital' needs 'templates': an object language -> list"),
    (SMALL + [SMALL[2]], r"ml.jsonl:6: relation 'capital' is declared twice"),
    (SMALL + [SMALL[0]], r"ml.jsonl:6: entity 'France' is declared twice"),
    (SMALL + [SMALL[3]], r"ml.jsonl:6: fact capital:France is given twice"),
    (_replace(3, {"relation": "capital", "subject": "France", "objects": {"en": "Paris", "fr": "", "zh": "巴黎"}}),
     r"ml.jsonl:4: 'fr' is empty"),
    (_replace(3, {"relation": "capital", "subject": "France", "objects": {"en": "[MASK]", "fr": "P", "zh": "巴"}}),
     r"ml.jsonl:4: .*mask token"),
])
def test_reader_errors_name_the_line(tmp_path, records, message):
    with pytest.raises(FactError, match=message):
        read_multilingual(_write(tmp_path, records))
