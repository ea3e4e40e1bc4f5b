"""Prompt and answer encoding: bad input, leading spaces per tokenizer family, multi-token answers, scores."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from kneuron import Fact, Prompt, answer_probability, encode, top_predictions
from kneuron.errors import FactError, KneuronError
from kneuron.facts import answer_token_ids
from kneuron.models import from_model
from tiny_models import MULTI_TOKEN_WORDS, WORDS, tiny_config, tiny_lm, tiny_tokenizer

CORPUS = [
    "The capital of France is Paris.", "The capital of Japan is Tokyo.", "The capital of Italy is Rome.",
    "The chemical symbol for gold is Au.", "Mozart was a famous composer.", "Tokyo is the capital of Japan.",
    "People in Paris speak French.", "Rome is an old city and Paris is a big city.", "Einstein was a physicist.",
    "The official language of Brazil is Portuguese.", "The currency of Japan is the yen.",
]
CORPUS_WORDS = sorted({w.strip(".") for s in CORPUS for w in s.split()})


# ------------------------------------------------------------------------------------- offline tokenizers

@functools.cache
def byte_level_bpe() -> PreTrainedTokenizerFast:
    """GPT-2 style: byte-level BPE, the space is part of the next token ("Ġ")."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


@functools.cache
def metaspace_bpe() -> PreTrainedTokenizerFast:
    """SentencePiece / Llama style: spaces become "▁", prepended to the first word of the text."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@functools.cache
def causal_lm_with(kind: str):
    """A tiny causal LanguageModel whose tokenizer is ``kind`` ("bpe", "metaspace" or "wordpiece")."""
    tokenizer = {"bpe": byte_level_bpe, "metaspace": metaspace_bpe,
                 "wordpiece": lambda: tiny_tokenizer("causal")}[kind]()
    family = "gpt2" if kind == "bpe" else "llama"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family, vocab_size=len(tokenizer)))
    return from_model(model, tokenizer, name=f"tiny-{family}-{kind}")


@functools.cache
def cached_tiny(family: str, dtype: torch.dtype = torch.float32):
    return tiny_lm(family, dtype=dtype)


def tokens(lm, ids) -> list[str]:
    return lm.tokenizer.convert_ids_to_tokens(list(ids))


# ------------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("template", ["The capital of [X] is Paris.", "[Y] is the capital of [Y].", ""])
def test_template_needs_exactly_one_answer_slot(template):
    with pytest.raises(FactError, match=r"\[Y\]"):
        Prompt.from_template(template, "France")
    with pytest.raises(FactError, match=r"exactly one"):
        Fact("France", "capital", "Paris", (template,))


@pytest.mark.parametrize(("family", "template"), [
    ("bert", "The capital of France is Paris."),  # a masked model needs [Y]; plain causal text is a valid prompt
    ("bert", "[Y] and [Y]."),
    ("llama", "[Y] and [Y]."),
])
def test_encode_rejects_bad_templates(family, template):
    with pytest.raises(FactError):
        encode(cached_tiny(family), template, "Paris")


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("answer", ["", "   ", "\n"])
def test_empty_answer(family, answer):
    lm = cached_tiny(family)
    with pytest.raises(FactError, match="answer is empty"):
        encode(lm, "The capital of France is [Y].", answer)
    with pytest.raises(FactError, match="empty"):
        Fact("France", "capital", answer, ("The capital of [X] is [Y].",))


def test_empty_subject():
    with pytest.raises(FactError, match="subject"):
        Fact("", "capital", "Paris", ("The capital of [X] is [Y].",))
    with pytest.raises(FactError, match="subject"):
        Prompt.from_template("The capital of [X] is [Y].", "")


@pytest.mark.parametrize("template", ["[Y] is the capital of France.", "  [Y] is the capital of France."])
def test_causal_template_with_nothing_before_the_answer(template):
    lm = cached_tiny("llama")
    with pytest.raises(FactError, match="nothing before"):
        encode(lm, template, "Paris")
    with pytest.raises(FactError, match="nothing before"):
        top_predictions(lm, template)
    # a masked model reads the whole sentence, so the same template is fine there
    assert encode(cached_tiny("bert"), template, "Paris").answer_ids


def test_unknown_answer_on_a_masked_model():
    lm = cached_tiny("bert")
    with pytest.raises(FactError, match=r"\[UNK\]"):
        encode(lm, "The capital of France is [Y].", "Xylophone")
    with pytest.raises(FactError, match="vocabulary"):
        answer_probability(lm, "The capital of France is [Y].", "Paris Xylophone")


def test_errors_are_kneuron_errors():
    assert issubclass(FactError, KneuronError)


def test_masked_tokenizer_without_mask_token():
    lm = from_model(cached_tiny("bert").model, tiny_tokenizer("causal"), name="bert-without-mask")
    with pytest.raises(FactError, match="no mask token"):
        encode(lm, "The capital of France is [Y].", "Paris")


# ------------------------------------------------------------------------------------- leading spaces

def test_byte_level_bpe_answer_carries_its_space():
    lm = causal_lm_with("bpe")
    tok = lm.tokenizer
    ids = answer_token_ids(lm, Prompt.from_text("The capital of France is"), "Paris")
    assert tokens(lm, ids)[0].startswith("Ġ")
    assert tok.decode(ids) == " Paris"
    # exactly the tokens the answer has in running text
    full = tok("The capital of France is Paris", add_special_tokens=False)["input_ids"]
    assert full[-len(ids):] == ids
    assert ids != tok("Paris", add_special_tokens=False)["input_ids"]


def test_byte_level_bpe_answer_without_space_in_template():
    lm = causal_lm_with("bpe")
    ids = answer_token_ids(lm, Prompt.from_template("The chemical symbol for gold is:[Y]"), "Au")
    assert not tokens(lm, ids)[0].startswith("Ġ")
    assert lm.tokenizer.decode(ids) == "Au"


def test_byte_level_bpe_strips_spaces_given_with_the_answer():
    lm = causal_lm_with("bpe")
    prompt = Prompt.from_text("The capital of France is")
    assert answer_token_ids(lm, prompt, " Paris ") == answer_token_ids(lm, prompt, "Paris")


def test_metaspace_answer_is_a_word_start():
    lm = causal_lm_with("metaspace")
    tok = lm.tokenizer
    ids = answer_token_ids(lm, Prompt.from_text("The capital of France is"), "Paris")
    assert tokens(lm, ids) == ["▁Paris"]
    full = tok("The capital of France is Paris", add_special_tokens=False)["input_ids"]
    assert full[-len(ids):] == ids
    # a SentencePiece-style encoder adds "▁" to the text's first word, so without context the same token results
    assert tok("Paris", add_special_tokens=False)["input_ids"] == ids


def test_wordpiece_answer_after_a_space_and_glued_to_punctuation():
    lm = causal_lm_with("wordpiece")
    assert tokens(lm, answer_token_ids(lm, Prompt.from_text("The capital of France is"), "Paris")) == ["Paris"]
    prompt = Prompt.from_template("The capital of France is ([Y]).")
    assert tokens(lm, answer_token_ids(lm, prompt, "Paris")) == ["Paris"]


# -------------------------------------------------------------------------------- multi-token answers

@pytest.mark.parametrize("word", sorted(MULTI_TOKEN_WORDS))
def test_multi_token_answer_kept_as_a_sequence_causal(word):
    lm = cached_tiny("llama")
    query = encode(lm, "The capital of Denmark is", word)
    assert tuple(tokens(lm, query.answer_ids)) == MULTI_TOKEN_WORDS[word]
    prompt_len = len(query) - len(query.answer_ids) + 1
    # teacher forcing: the input is prompt + answer[:-1]; position t predicts answer token t
    assert query.input_ids[prompt_len:].tolist() == list(query.answer_ids[:-1])
    assert query.target_positions == tuple(range(prompt_len - 1, prompt_len - 1 + len(query.answer_ids)))
    assert query.position == prompt_len - 1


@pytest.mark.parametrize("word", sorted(MULTI_TOKEN_WORDS))
def test_multi_token_answer_kept_as_a_sequence_masked(word):
    lm = cached_tiny("bert")
    query = encode(lm, "The capital of Denmark is [Y].", word)
    assert tuple(tokens(lm, query.answer_ids)) == MULTI_TOKEN_WORDS[word]
    mask = lm.tokenizer.mask_token_id
    assert [query.input_ids[p].item() for p in query.target_positions] == [mask] * len(query.answer_ids)
    assert list(query.target_positions) == list(range(query.position, query.position + len(query.answer_ids)))
    assert query.text.count("[MASK]") == len(query.answer_ids)


# ---------------------------------------------------------------------------- probability by hand
# answer_probability takes its softmax in float32 (``.float()``), also for a float64 model, hence rel=1e-5.
REL = 1e-5


@torch.no_grad()
def test_answer_probability_is_the_teacher_forced_product_causal():
    lm = cached_tiny("llama", torch.float64)
    tok, model = lm.tokenizer, lm.model
    prompt, answer = "The capital of Denmark is", "Copenhagen"
    ids = tok(prompt)["input_ids"]
    answer_ids = tok(" " + answer, add_special_tokens=False)["input_ids"]
    assert len(answer_ids) == 2
    probs, context = [], list(ids)
    for target in answer_ids:  # one forward pass per answer token, on the growing context
        logits = model(input_ids=torch.tensor([context])).logits[0, -1]
        probs.append(torch.softmax(logits, -1)[target].item())
        context.append(target)
    first = model(input_ids=torch.tensor([ids])).logits[0, -1]
    rank = int((first > first[answer_ids[0]]).sum())

    result = answer_probability(lm, prompt, answer)
    assert result.token_probabilities == pytest.approx(probs, rel=REL)
    assert result.probability == pytest.approx(math.prod(probs), rel=REL)
    assert result.rank == rank
    assert result.correct == (rank == 0)


@torch.no_grad()
def test_answer_probability_is_the_product_over_masks_masked():
    lm = cached_tiny("bert", torch.float64)
    tok, model = lm.tokenizer, lm.model
    ids = tok("The capital of Denmark is [MASK] [MASK].")["input_ids"]
    positions = [i for i, t in enumerate(ids) if t == tok.mask_token_id]
    answer_ids = tok.convert_tokens_to_ids(list(MULTI_TOKEN_WORDS["Copenhagen"]))
    logits = model(input_ids=torch.tensor([ids])).logits[0]
    probs = [torch.softmax(logits[p], -1)[a].item() for p, a in zip(positions, answer_ids, strict=True)]
    rank = int((logits[positions[0]] > logits[positions[0], answer_ids[0]]).sum())

    result = answer_probability(lm, "The capital of Denmark is [Y].", "Copenhagen")
    assert result.probability == pytest.approx(math.prod(probs), rel=REL)
    assert result.token_probabilities == pytest.approx(probs, rel=REL)
    assert result.rank == rank


def test_answer_probability_accepts_an_encoded_query():
    lm = cached_tiny("gpt2", torch.float64)
    query = encode(lm, "The capital of France is", "Paris")
    assert answer_probability(lm, query) == answer_probability(lm, "The capital of France is", "Paris")


# ---------------------------------------------------------------------------------- property tests

ALPHA_WORDS = [w for w in WORDS if w.isalpha()]


@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.sampled_from(ALPHA_WORDS + sorted(MULTI_TOKEN_WORDS)), min_size=1, max_size=3))
def test_wordpiece_answers_decode_back(words):
    answer = " ".join(words)
    for lm in (cached_tiny("bert"), cached_tiny("llama")):
        prompt = Prompt.from_template("The answer is [Y].")
        ids = answer_token_ids(lm, prompt, answer)
        assert lm.tokenizer.decode(ids).strip() == answer


@settings(max_examples=60, deadline=None)
@given(answer=st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=12))
def test_byte_level_bpe_any_word_decodes_back_with_its_space(answer):
    lm = causal_lm_with("bpe")
    ids = answer_token_ids(lm, Prompt.from_text("The capital of France is"), answer)
    assert lm.tokenizer.decode(ids) == " " + answer


@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.sampled_from(CORPUS_WORDS), min_size=1, max_size=3))
def test_metaspace_corpus_words_decode_back(words):
    lm = causal_lm_with("metaspace")
    answer = " ".join(words)
    ids = answer_token_ids(lm, Prompt.from_text("People say that"), answer)
    assert lm.tokenizer.decode(ids).strip() == answer
    assert tokens(lm, ids)[0].startswith("▁")


def test_from_model_refuses_a_missing_tokenizer():
    """``from_model(model, tokenizer=None)`` was accepted, and integrated gradients then failed with an
    AttributeError (issue 27, item 7)."""
    from kneuron.errors import InputError

    for tokenizer in (None, "gpt2"):
        with pytest.raises(InputError, match="from_model needs the model's tokenizer"):
            from_model(cached_tiny("llama").model, tokenizer)
