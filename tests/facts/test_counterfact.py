"""The CounterFact reader on a fixture written to the documented format (ROME's counterfact.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kneuron.errors import FactError
from kneuron.facts.counterfact import CounterFactRecord, parse_record, read_counterfact

FIXTURE = Path(__file__).parent.parent / "fixtures" / "counterfact.json"


def test_reads_every_field():
    records = read_counterfact(FIXTURE)
    assert [r.case_id for r in records] == [0, 1, 2]
    first = records[0]
    assert isinstance(first, CounterFactRecord)
    assert first.subject == "Danielle Darrieux" and first.prompt == "The mother tongue of {} is"
    assert first.rewrite_prompt == "The mother tongue of Danielle Darrieux is"
    assert (first.relation_id, first.target_true, first.target_new) == ("P103", "French", "English")
    assert (first.target_true_id, first.target_new_id, first.pararel_idx) == ("Q150", "Q1860", 2796)
    assert len(first.paraphrase_prompts) == 2 and len(first.attribute_prompts) == 2
    assert len(first.generation_prompts) == 2
    # bare-string neighbourhood prompts take target_true as their answer
    assert first.neighborhood_prompts[0] == ("The mother tongue of Léon Blum is", "French")
    # the {"prompt", "target"} form keeps its own target; a record without ids or pararel_idx is fine
    third = records[2]
    assert third.neighborhood_prompts == (("In China they speak", "Chinese"),
                                          ("The language spoken in Italy is", "Italian"))
    assert third.target_new_id == "" and third.pararel_idx is None


def test_fact_view():
    record = read_counterfact(FIXTURE)[1]
    fact = record.fact()
    assert (fact.subject, fact.relation, fact.object, fact.id) == ("France", "P36", "Paris", "counterfact:1")
    assert [p.causal_text for p in fact.prompts()] == [
        "The capital of France is", "France's capital city is", "The capital city of France is"]


def test_limit():
    assert len(read_counterfact(FIXTURE, limit=2)) == 2


def _record(**changes) -> dict:
    record = json.loads(FIXTURE.read_text())[1]
    for key, value in changes.items():
        if key.startswith("rw_"):
            record["requested_rewrite"][key[3:]] = value
        elif value is None:
            record.pop(key)
        else:
            record[key] = value
    return record


@pytest.mark.parametrize(("changes", "message"), [
    ({"requested_rewrite": None}, "requested_rewrite"),
    ({"rw_prompt": "The capital of France is"}, "exactly one"),
    ({"rw_prompt": "{} and {}"}, "exactly one"),
    ({"rw_subject": ""}, "subject"),
    ({"rw_target_new": ["Rome"]}, "target_new"),
    ({"rw_target_true": {"id": "Q90"}}, "target_true"),
    ({"case_id": "one"}, "case_id"),
    ({"paraphrase_prompts": "France's capital is"}, "paraphrase_prompts"),
    ({"neighborhood_prompts": [3]}, "neighborhood prompt"),
])
def test_malformed_records(tmp_path, changes, message):
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([_record(**changes)]))
    with pytest.raises(FactError, match=message) as info:
        read_counterfact(path)
    assert "record 0" in str(info.value)


def test_plain_string_targets_are_accepted():
    record = parse_record(_record(rw_target_new="Rome", rw_target_true="Paris"))
    assert (record.target_new, record.target_true) == ("Rome", "Paris")


def test_bad_files(tmp_path):
    with pytest.raises(FactError, match="No CounterFact file"):
        read_counterfact(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(FactError, match="not valid JSON"):
        read_counterfact(tmp_path / "bad.json")
    (tmp_path / "dict.json").write_text("{}")
    with pytest.raises(FactError, match="list of records"):
        read_counterfact(tmp_path / "dict.json")
    (tmp_path / "item.json").write_text("[3]")
    with pytest.raises(FactError, match="JSON object"):
        read_counterfact(tmp_path / "item.json")
