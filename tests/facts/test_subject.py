"""The subject's token positions, found by character offsets (causal tracing corrupts them; ROME's key is the FFN
activation at the last of them)."""

from __future__ import annotations

import pytest

from kneuron.errors import FactError
from kneuron.facts.encoding import encode
from kneuron.facts.fact import Prompt
from kneuron.facts.subject import subject_last_position, subject_positions
from tiny_models import tiny_lm


def _tokens(lm, query, positions):
    return [lm.tokenizer.convert_ids_to_tokens(int(query.input_ids[p])) for p in positions]


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_a_one_token_subject_is_its_own_token(kind):
    lm = tiny_lm(kind)
    prompt = Prompt.from_template("The capital of [X] is [Y].", "France")
    query = encode(lm, prompt, "Paris")
    positions = subject_positions(lm, prompt, "France", query)
    assert _tokens(lm, query, positions) == ["France"]
    assert subject_last_position(lm, prompt, "France", query) == positions[0]


def test_a_subject_of_several_tokens_and_words():
    lm = tiny_lm("llama")
    prompt = Prompt.from_template("The capital of [X] is [Y].", "Stockholm Sweden")
    query = encode(lm, prompt, "Paris")
    positions = subject_positions(lm, prompt, "Stockholm Sweden", query)
    assert _tokens(lm, query, positions) == ["Stock", "##holm", "Sweden"]
    assert list(positions) == list(range(positions[0], positions[0] + 3))


def test_the_template_places_the_subject_when_its_words_repeat():
    lm = tiny_lm("llama")
    prompt = Prompt.from_template("France is a country and the capital of [X] is [Y].", "France")
    query = encode(lm, prompt, "Paris")
    (position,) = subject_positions(lm, prompt, "France", query)
    assert position > 2  # not the first "France" (position 1, after <bos>)


def test_a_masked_model_finds_a_subject_after_the_answer():
    lm = tiny_lm("bert")
    prompt = Prompt.from_template("[Y] is the capital of [X].", "France")
    query = encode(lm, prompt, "Copenhagen")  # two masks before the subject
    assert _tokens(lm, query, subject_positions(lm, prompt, "France", query)) == ["France"]


def test_a_causal_model_does_not_read_a_subject_after_the_answer():
    lm = tiny_lm("llama")
    prompt = Prompt.from_template("The city [Y] is the capital of [X].", "France")
    with pytest.raises(FactError, match="not in the text the model reads"):
        subject_positions(lm, prompt, "France", encode(lm, prompt, "Paris"))
