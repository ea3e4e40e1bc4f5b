"""Multilingual prompts through the encoders: no space before a Chinese answer (or after French "d'"),
answers that decode back to themselves, on the tiny tokenizer and on the real SmolLM2 / Gemma 3 tokenizers."""

from __future__ import annotations

import pytest

from kneuron.facts import encode, multilingual_facts
from kneuron.facts.encoding import answer_token_ids
from kneuron.facts.fact import Prompt
from kneuron.facts.languages import language_of


def _ids(tokenizer, text, special=False):
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def test_a_chinese_prompt_has_no_space_before_its_answer(make_lm):
    lm = make_lm("llama")
    fact = next(f for f in multilingual_facts(["zh"], ["capital"]) if f.id == "capital:France@zh")
    prompt = fact.prompts()[0]
    assert (prompt.prefix, prompt.suffix, prompt.space) == ("法国的首都是", "。", False)
    assert prompt.causal_text == "法国的首都是"
    query = encode(lm, prompt, fact.object)
    prompt_ids = _ids(lm.tokenizer, "法国的首都是", special=True)
    # the tiny WordPiece vocabulary has no Chinese: the unspaced sentence is one unknown word, so the answer is
    # tokenized on its own, without a space, and continues the prompt's ids
    assert query.answer_ids == tuple(_ids(lm.tokenizer, "巴黎"))
    assert query.input_ids.tolist() == prompt_ids + list(query.answer_ids[:-1])
    assert query.target_positions == tuple(range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(query.answer_ids)))


def test_an_elided_french_prompt_keeps_the_answer_glued(make_lm):
    lm = make_lm("llama")
    fact = next(f for f in multilingual_facts(["fr"], ["continent"]) if f.id == "continent:Nigeria@fr")
    prompt = next(p for p in fact.prompts() if p.prefix.endswith("d'"))
    assert prompt.causal_text == "Le Nigeria est un pays d'" and not prompt.space
    vocab = lm.tokenizer.get_vocab()
    assert answer_token_ids(lm, prompt, "Afrique") == _ids(lm.tokenizer, "Afrique")
    assert answer_token_ids(lm, Prompt.from_template("C'est un pays d'[Y].", ""), "Europe") == [vocab["Europe"]]


def _check_tokenizer(tokenizer, name):
    """Every multilingual prompt of a real tokenizer: the answer decodes to itself (with the template's space,
    or none), and prompt + answer ids decode to the sentence the template writes."""

    class Causal:  # what answer_token_ids reads of a LanguageModel
        kind = "causal"

        def __init__(self):
            self.tokenizer, self.name = tokenizer, name

    lm = Causal()
    checked = {}
    for fact in multilingual_facts():
        for prompt in fact.prompts():
            ids = answer_token_ids(lm, prompt, fact.object)
            text = tokenizer.decode(ids)
            assert text == (" " if prompt.space else "") + fact.object, (fact.id, prompt.causal_text, text)
            prompt_ids = _ids(tokenizer, prompt.causal_text)
            sentence = prompt.causal_text + (" " if prompt.space else "") + fact.object
            assert tokenizer.decode(prompt_ids + ids) == sentence, (fact.id, sentence)
            checked[language_of(fact)] = checked.get(language_of(fact), 0) + 1
    assert checked == {code: 336 for code in ("en", "fr", "de", "es", "zh")}


@pytest.mark.real_model
def test_smollm2_tokenizer_round_trips_every_answer(smollm2):
    _check_tokenizer(smollm2.tokenizer, smollm2.name)
    # byte-level BPE: a Chinese answer often starts with a token that is only part of a character's bytes
    first = smollm2.tokenizer.decode(_ids(smollm2.tokenizer, "巴黎")[:1])
    assert "\ufffd" in first


@pytest.mark.real_model
def test_gemma3_tokenizer_round_trips_every_answer():
    from transformers import AutoTokenizer

    from kneuron.errors import ModelLoadError
    from kneuron.models.loading import cache_dir

    try:
        folder = cache_dir("gemma3-270m")
    except ModelLoadError:  # the package is not installed (make gemma installs it; make test does not)
        pytest.skip("Gemma 3 270M is not installed (make gemma)")
    if not (folder / "tokenizer_config.json").is_file():
        pytest.skip("Gemma 3 270M is not in kneuron's cache (load it once: kneuron predict -m gemma3-270m ...)")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    _check_tokenizer(tokenizer, "gemma3-270m")
    assert _ids(tokenizer, "巴黎") == [tokenizer.convert_tokens_to_ids("巴黎")]  # one whole-word piece


@pytest.mark.real_model
def test_smollm2_knows_the_english_capitals_and_not_the_french(smollm2):
    from kneuron.facts import known_facts

    kept, _ = known_facts(smollm2, multilingual_facts(["en"], ["capital"]))
    assert len(kept) >= 10  # all 12 when the set was written
    kept, _ = known_facts(smollm2, multilingual_facts(["fr"], ["capital"]))
    assert len(kept) <= 2  # none: an English model continues "La capitale de la France est" with " une"
