"""Refusing what a model cannot read: mask tokens in causal prompts, placeholders in subjects and objects,
and facts sets with no template a causal model can use (the same error from `kneuron facts` and the library)."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

import kneuron.facts
from kneuron import cli
from kneuron.errors import FactError
from kneuron.facts import Fact, Prompt, encode, load_facts, top_predictions
from kneuron.facts.pararel import read_trex_triples
from tiny_models import tiny_lm

runner = CliRunner()
MASKS = ["[MASK]", "<mask>", "[mask]", "<MASK>"]


def _jsonl(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- mask tokens


@pytest.mark.parametrize("mask", MASKS)
def test_a_causal_prompt_with_a_mask_token_is_refused(mask):
    with pytest.raises(FactError, match=r"mask token .*text before \[Y\].*'The capital of France is'"):
        Prompt.from_text(f"The capital of France is {mask}.")


@pytest.mark.parametrize("mask", ["[MASK]", "<mask>"])
def test_encode_and_top_predictions_refuse_a_mask_token_for_a_causal_model(mask):
    lm = tiny_lm("llama")
    with pytest.raises(FactError, match="mask token"):
        encode(lm, f"The capital of France is {mask}.", "Paris")
    with pytest.raises(FactError, match="mask token"):
        top_predictions(lm, f"The capital of France is {mask}")


@pytest.mark.parametrize("mask", MASKS)
def test_a_template_with_a_mask_token_is_refused_with_the_causal_form(tmp_path, mask):
    path = _jsonl(tmp_path / "facts.jsonl", [
        {"relation": "capital", "templates": ["The capital of [X] is [Y].", f"[X]'s capital is {mask}, [Y]."]},
        {"subject": "France", "relation": "capital", "object": "Paris"},
    ])
    with pytest.raises(FactError, match=r"facts.jsonl:1: .*mask token .*\[Y\].*'The capital of \[X\] is \[Y\].'"):
        load_facts(path)
    with pytest.raises(FactError, match="mask token"):
        Fact("France", "capital", "Paris", (f"The capital of [X] is {mask}.",))


def test_the_cli_predict_refuses_a_mask_token_for_a_causal_model(fake_load):
    result = runner.invoke(cli.app, ["predict", "--model", "tiny-llama", "The capital of France is [MASK]."])
    assert result.exit_code == 1
    assert "error:" in result.output and "mask token [MASK]" in result.output
    assert "Traceback" not in result.output


def test_a_masked_model_still_reads_its_own_mask_token_on_the_command_line(fake_load):
    result = runner.invoke(cli.app, ["predict", "--model", "tiny-bert", "The capital of France is [MASK]."])
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------------ placeholders in fillers


@pytest.mark.parametrize(("subject", "obj", "name", "placeholder"), [
    ("the [Y] state", "Paris", "subject", "[Y]"), ("the [X] state", "Paris", "subject", "[X]"),
    ("France", "[Y]", "object", "[Y]"), ("France", "Pa[X]ris", "object", "[X]"),
])
def test_a_placeholder_in_a_subject_or_object_is_a_fact_error(subject, obj, name, placeholder):
    with pytest.raises(FactError, match=rf"capital:.*the {name} .*contains \[{placeholder[1]}\]"):
        Fact(subject, "capital", obj, ("The capital of [X] is [Y].",)).prompts()
    with pytest.raises(FactError, match="contains"):
        Prompt.from_template("The capital of [X] is [Y].", subject if name == "subject" else obj)


def test_a_placeholder_in_a_subject_names_the_file_line(tmp_path):
    path = _jsonl(tmp_path / "facts.jsonl", [
        {"relation": "capital", "templates": ["The capital of [X] is [Y]."]},
        {"subject": "France", "relation": "capital", "object": "Paris"},
        {"subject": "Peru [Y]", "relation": "capital", "object": "Lima"},
    ])
    with pytest.raises(FactError, match=r"facts.jsonl:3: .*capital:Peru \[Y\].*subject"):
        load_facts(path)
    csv = tmp_path / "facts.csv"
    csv.write_text("subject,relation,object,templates\nFrance,capital,Paris,The capital of [X] is [Y].\n"
                   "Peru,capital,[X],The capital of [X] is [Y].\n", encoding="utf-8")
    with pytest.raises(FactError, match=r"facts.csv:3: .*object"):
        load_facts(csv)
    trex = _jsonl(tmp_path / "P36.jsonl", [{"sub_label": "France", "obj_label": "Paris"},
                                           {"sub_label": "[X] land", "obj_label": "Lima"}])
    with pytest.raises(FactError, match=r"P36.jsonl:2: .*subject '\[X\] land'"):
        read_trex_triples(trex)


# ------------------------------------------------------------------------------------------ validate_facts


MASKED_ONLY = [Fact("France", "capital", "Paris", ("[Y] is the capital of [X].", "The capital of [Y] is [X].")),
               Fact("Mozart", "instrument", "piano", ("[Y] was played by [X].",))]


def test_validate_facts_refuses_a_set_without_causal_templates():
    with pytest.raises(FactError, match=r"None of the facts in f.jsonl .*'\[Y\] is the capital of \[X\].'.*"
                                        r"text before \[Y\]"):
        kneuron.facts.validate_facts(MASKED_ONLY, causal=True, source="f.jsonl")
    assert kneuron.facts.validate_facts(MASKED_ONLY, causal=False) == MASKED_ONLY


def test_validate_facts_keeps_the_causal_templates_and_checks_relations():
    mixed = [*MASKED_ONLY, Fact("Japan", "capital", "Tokyo", ("[Y] is in [X].", "The capital of [X] is [Y]."))]
    usable = kneuron.facts.validate_facts(mixed, causal=True)
    assert [(f.subject, f.templates) for f in usable] == [("Japan", ("The capital of [X] is [Y].",))]
    assert kneuron.facts.validate_facts(mixed, causal=False, relations=["instrument"]) == [MASKED_ONLY[1]]
    with pytest.raises(FactError, match=r"No facts of relation 'language' in x; its relations: capital, instrument"):
        kneuron.facts.validate_facts(mixed, causal=True, relations=["capital", "language"], source="x")
    with pytest.raises(FactError, match="x holds no facts"):
        kneuron.facts.validate_facts([], causal=False, source="x")


def test_the_facts_command_gives_the_validation_error_instead_of_zero_counts(tmp_path, fake_load):
    path = _jsonl(tmp_path / "masked.jsonl", [
        {"relation": "capital", "templates": ["[Y] is the capital of [X].", "The capital of [Y] is [X]."]},
        {"subject": "France", "relation": "capital", "object": "Paris"},
    ])
    with pytest.raises(FactError) as expected:
        kneuron.facts.validate_facts(load_facts(path), causal=True, source=str(path))
    result = runner.invoke(cli.app, ["facts", "--model", "tiny-llama", "--facts", str(path)],
                           env={"COLUMNS": "500"})
    assert result.exit_code == 1
    assert " ".join(result.output.split()).endswith(f"error: {expected.value}")
    result = runner.invoke(cli.app, ["facts", "--model", "tiny-bert", "--facts", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert re.search(r"all\W+0\W+1", result.output)


def test_the_facts_command_names_a_missing_relation(fake_load):
    result = runner.invoke(cli.app, ["facts", "--model", "tiny-llama", "--relations", "capital,nonsense"],
                           env={"COLUMNS": "500"})
    assert result.exit_code == 1
    assert "No facts of relation 'nonsense'" in result.output or "No built-in relation 'nonsense'" in result.output
