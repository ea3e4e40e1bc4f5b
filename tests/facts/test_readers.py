"""Fact readers: our JSONL/CSV schema, PARAREL, LAMA T-REx, the knowledge-neurons bags, and load_facts dispatch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kneuron.errors import FactError
from kneuron.facts import Fact, causal_templates, load_facts
from kneuron.facts.kn_bags import read_kn_bags
from kneuron.facts.pararel import read_lama_trex, read_pararel, read_pararel_patterns
from kneuron.facts.schema import read_csv, read_jsonl, write_jsonl

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "facts"
PARAREL = FIXTURES / "pararel"
PATTERNS, TRIPLES = PARAREL / "pattern_data" / "graphs_json", PARAREL / "trex_lms_vocab"
BAD = FIXTURES / "bad"

OUR_FACTS = [
    Fact("France", "capital", "Paris", ("The capital of [X] is [Y].", "[X]'s capital city is [Y].")),
    Fact("Japan", "capital", "Tokyo", ("The capital of [X] is [Y].", "[X]'s capital city is [Y]."), id="capital-jp"),
    Fact("Peru", "capital", "Lima", ("Peru's capital is [Y].",)),
    Fact("gold", "symbol", "Au", ("The chemical symbol for [X] is [Y].",)),
]


# ------------------------------------------------------------------------------------------- our schema

def test_jsonl_declared_relation_own_templates_and_ids():
    assert read_jsonl(FIXTURES / "facts.jsonl") == OUR_FACTS


def test_csv_reads_the_same_facts_as_jsonl():
    assert read_csv(FIXTURES / "facts.csv") == OUR_FACTS


def test_write_then_read_jsonl(tmp_path):
    path = write_jsonl(OUR_FACTS, tmp_path / "out.jsonl")
    assert read_jsonl(path) == OUR_FACTS
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    # capital's facts do not all share templates (Peru has its own), so each carries them; symbol is declared once
    assert {"relation": "symbol", "templates": ["The chemical symbol for [X] is [Y]."]} in lines


def test_malformed_jsonl_line_names_file_and_line():
    with pytest.raises(FactError, match=r"malformed\.jsonl:3: malformed JSON"):
        read_jsonl(BAD / "malformed.jsonl")


def test_malformed_csv_row_names_file_and_line():
    with pytest.raises(FactError, match=r"malformed\.csv:3: .*more cells"):
        read_csv(BAD / "malformed.csv")


@pytest.mark.parametrize(("name", "missing"), [("no_subject_slot.jsonl", r"\[X\]"), ("no_answer_slot.jsonl", r"\[Y\]")])
def test_relation_template_without_placeholder(name, missing):
    with pytest.raises(FactError, match=rf"{name}:1: template .* lacks {missing}"):
        read_jsonl(BAD / name)


def test_fact_without_any_templates_says_how_to_declare():
    with pytest.raises(FactError, match=r"no_templates\.jsonl:1: .*declare the relation once"):
        read_jsonl(BAD / "no_templates.jsonl")


@pytest.mark.parametrize(("line", "message"), [
    ('{"subject": "France", "relation": "capital"}', "missing 'object'"),
    ('{"subject": "  ", "relation": "capital", "object": "Paris", "template": "[X] has [Y]."}', "'subject' is empty"),
    ('{"subject": 3, "relation": "capital", "object": "Paris", "template": "[X] has [Y]."}', "must be a string"),
    ('{"subject": "A", "relation": "r", "object": "B", "templates": "[X] [Y] [Y]"}', "placeholders"),
    ('{"subject": "A", "relation": "r", "object": "B", "templates": 5}', "list of strings"),
    ("[1, 2]", "expected a JSON object"),
])
def test_bad_lines(tmp_path, line, message):
    path = tmp_path / "facts.jsonl"
    path.write_text('{"relation": "capital", "templates": ["The capital of [X] is [Y]."]}\n' + line + "\n")
    with pytest.raises(FactError, match=rf"facts\.jsonl:2: .*{message}"):
        read_jsonl(path)


def test_relation_declared_twice_differently(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text('{"relation": "r", "templates": ["[X] is [Y]."]}\n'
                    '{"relation": "r", "templates": ["[X] was [Y]."]}\n')
    with pytest.raises(FactError, match=r"facts\.jsonl:2: .*declared twice"):
        read_jsonl(path)


def test_not_utf8_and_missing_file(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"subject": "Bogot\xe1"}\n'.encode("latin-1"))
    with pytest.raises(FactError, match="not UTF-8"):
        read_jsonl(path)
    with pytest.raises(FactError, match="No facts file or folder"):
        load_facts(tmp_path / "nowhere.jsonl")


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_word = _text.filter(lambda s: s.strip())


@st.composite
def facts_strategy(draw):
    facts = []
    for _ in range(draw(st.integers(1, 5))):
        relation = draw(st.sampled_from(["r1", "r2", draw(_word)]))
        templates = tuple(draw(st.lists(st.builds(lambda a, b, c: f"{a}[X]{b}[Y]{c}", _text, _text, _text),
                                            min_size=1, max_size=3)))
        templates = tuple(t for t in templates if t.count("[X]") == 1 and t.count("[Y]") == 1) or ("[X] [Y]",)
        facts.append(Fact(draw(_word), relation, draw(_word), templates,
                          id=draw(st.one_of(st.just(""), _word))))
    return facts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(facts=facts_strategy())
def test_jsonl_round_trip_of_arbitrary_strings(tmp_path, facts):
    path = write_jsonl(facts, tmp_path / "round.jsonl")
    assert read_jsonl(path) == facts


# ------------------------------------------------------------------------------------------- PARAREL

def test_pararel_files_and_directories():
    capital = read_pararel(PATTERNS / "P36.jsonl", TRIPLES / "P36.jsonl")
    assert [(f.subject, f.relation, f.object) for f in capital] == [
        ("Germany", "P36", "Berlin"), ("Denmark", "P36", "Copenhagen"), ("Japan", "P36", "Tokyo")]
    assert len(capital[0].templates) == 5
    assert capital[0].id == "P36:aa0c6755-5881-4892-8e12-e817868a3b62"
    both = read_pararel(PATTERNS, TRIPLES)  # P1001 has patterns but no triples: skipped
    assert {f.relation for f in both} == {"P36", "P37"} and len(both) == 5
    assert load_facts(PARAREL) == both


def test_pararel_patterns_need_both_placeholders():
    assert read_pararel_patterns(PATTERNS / "P37.jsonl")[0] == "The official language of [X] is [Y]."
    with pytest.raises(FactError, match=r"pattern_no_x\.jsonl:1: .*lacks \[X\]"):
        read_pararel_patterns(BAD / "pattern_no_x.jsonl")


def test_causal_filter_drops_templates_that_start_with_the_answer():
    facts = load_facts(PARAREL, relations=["P36"], causal=True)
    assert all(not t.startswith("[Y]") for f in facts for t in f.templates)
    assert len(facts[0].templates) == 4
    only_masked = Fact("A", "r", "B", ("[Y] is [X].",))
    assert causal_templates([only_masked]) == []


def test_pattern_file_alone_is_explained():
    with pytest.raises(FactError, match="PARAREL patterns but no facts"):
        load_facts(PATTERNS / "P36.jsonl")


# ------------------------------------------------------------------------------------------- LAMA

def test_lama_trex_with_relations_found_above():
    facts = load_facts(FIXTURES / "lama" / "TREx" / "P36.jsonl")
    assert [(f.subject, f.object, f.templates) for f in facts] == [
        ("Germany", "Berlin", ("The capital of [X] is [Y] .",)), ("Japan", "Tokyo", ("The capital of [X] is [Y] .",))]
    assert facts[0].prompts()[0].causal_text == "The capital of Germany is"
    assert load_facts(FIXTURES / "lama") == facts


def test_lama_trex_without_relations_file(tmp_path):
    copy = tmp_path / "P36.jsonl"
    shutil.copy(FIXTURES / "lama" / "TREx" / "P36.jsonl", copy)
    with pytest.raises(FactError, match="relations.jsonl"):
        read_lama_trex(copy)
    facts = read_lama_trex(copy, relations={"P36": ["[X]'s capital is [Y]."]})
    assert facts[1].templates == ("[X]'s capital is [Y].",)


# -------------------------------------------------------------------------------- knowledge-neurons data

def test_kn_allbags_infers_subjects_and_templates():
    facts = read_kn_bags(FIXTURES / "kn" / "data_all_allbags.json")
    assert [(f.subject, f.relation, f.object) for f in facts] == [
        ("Germany", "P36", "Berlin"), ("Japan", "P36", "Tokyo"), ("Cape Verde", "P36", "Praia"),
        ("Albert Einstein", "P101", "physics"), ("Pablo Picasso", "P101", "art")]
    assert facts[2].templates == ("The capital of [X] is [Y].", "[X]'s capital is [Y].", "[Y] is the capital of [X].")
    assert facts[3].templates == ("[X] works in the field of [Y].", "[X] specializes in [Y].")
    assert load_facts(FIXTURES / "kn" / "data_all_allbags.json") == facts


def test_kn_paraphrases_with_subject_after_the_answer():
    """Bags shaped like the official data_11.json (P1376, 14 PARAREL patterns, subject after [MASK] in some)."""
    facts = load_facts(FIXTURES / "kn11" / "data_11.json")
    assert [(f.subject, f.relation, f.object) for f in facts] == [
        ("Edmonton", "P1376", "Alberta"), ("Ankara", "P1376", "Turkey"), ("Buenos Aires", "P1376", "Argentina")]
    assert facts[2].templates[:5] == ("[X] is the capital of [Y].", "The capital of [Y] is [X].",
                                      "The capital city of [Y] is [X].", "[X] is the capital city of [Y].",
                                      "[Y]'s capital, [X].")
    causal = causal_templates(facts)[0].templates
    assert len(causal) == 6 and all(t.index("[X]") < t.index("[Y]") for t in causal)


def test_kn_flat_list_takes_relation_from_entries():
    facts = read_kn_bags(FIXTURES / "kn" / "data_all.json")
    assert [(f.subject, f.relation) for f in facts] == [("Germany", "P36"), ("Japan", "P36")]


@pytest.mark.parametrize(("content", "message"), [
    ('{"P36": [[["The capital of X is [MASK].", "Y"]], [', "malformed JSON"),
    ('{"P36": [[["no mask here", "Y", "P36"]]]}', "exactly one"),
    ('{"P36": [[["[MASK]", 3, "P36"]]]}', "not \\[sentence, answer, relation\\]"),
    ('{"P36": [[]]}', "non-empty list"),
    ('"bags"', "expected a JSON object"),
])
def test_kn_bad_input(tmp_path, content, message):
    path = tmp_path / "data_all_allbags.json"
    path.write_text(content)
    with pytest.raises(FactError, match=message):
        read_kn_bags(path)


# ------------------------------------------------------------------------------------------- dispatch

def test_load_facts_dispatch():
    assert load_facts(FIXTURES / "facts.jsonl") == OUR_FACTS
    assert load_facts(str(FIXTURES / "facts.csv"), relations=["symbol"]) == OUR_FACTS[3:]
    builtin = load_facts("builtin", relations=["capital"])
    assert builtin and {f.relation for f in builtin} == {"capital"}


def test_empty_folder_and_file(tmp_path):
    with pytest.raises(FactError, match="No facts found in folder"):
        load_facts(tmp_path)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(FactError, match="has no facts"):
        load_facts(tmp_path / "empty.jsonl")



def test_kn_folder_drops_facts_repeated_across_files(tmp_path):
    shutil.copy(FIXTURES / "kn" / "data_all_allbags.json", tmp_path / "data_all_allbags.json")
    shutil.copy(FIXTURES / "kn" / "data_all_allbags.json", tmp_path / "data_11.json")
    assert load_facts(tmp_path) == read_kn_bags(FIXTURES / "kn" / "data_all_allbags.json")


def test_byte_order_mark_is_ignored(tmp_path):
    for name in ("facts.jsonl", "facts.csv"):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + (FIXTURES / name).read_bytes())
        assert load_facts(path) == OUR_FACTS
