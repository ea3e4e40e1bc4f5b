"""The tiny-model factory itself: every family builds, deterministically, in both dtypes."""

from __future__ import annotations

import pytest
import torch

from kneuron.models import families
from tiny_models import FAMILIES, MULTI_TOKEN_WORDS, default_layers, tiny_kind, tiny_lm, tiny_tokenizer


def test_every_registered_family_has_a_tiny_model():
    assert sorted(FAMILIES) == sorted(spec.family for spec in families())


def test_builds(family):
    lm = tiny_lm(family)
    assert lm.spec.family == family
    assert lm.kind == tiny_kind(family)
    assert (lm.n_layers, lm.n_neurons) == (default_layers(family), 32)
    assert not lm.model.training
    assert lm.model.config.vocab_size == len(lm.tokenizer)


def test_sizes_and_dtype(family):
    lm = tiny_lm(family, layers=3, neurons=48, dtype=torch.float64)
    assert (lm.n_layers, lm.n_neurons) == (3, 48)
    assert lm.dtype == torch.float64


def test_same_seed_same_model_and_output(family):
    a, b, c = tiny_lm(family), tiny_lm(family), tiny_lm(family, seed=1)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        out_a, out_b, out_c = (m.model(input_ids=ids).logits for m in (a, b, c))
    assert torch.equal(out_a, out_b)
    assert not torch.equal(out_a, out_c)


@pytest.mark.parametrize("kind", ["mlm", "causal"])
def test_tokenizer(kind):
    tok = tiny_tokenizer(kind)
    ids = tok("The capital of France is Paris.")["input_ids"]
    tokens = tok.convert_ids_to_tokens(ids)
    if kind == "mlm":
        assert tokens == ["[CLS]", "The", "capital", "of", "France", "is", "Paris", ".", "[SEP]"]
        assert tok.mask_token == "[MASK]"
    else:
        assert tokens == ["<bos>", "The", "capital", "of", "France", "is", "Paris", "."]
        assert tok.mask_token is None
    for word, pieces in MULTI_TOKEN_WORDS.items():
        assert tok.tokenize(word) == list(pieces)
        assert tok.decode(tok(word, add_special_tokens=False)["input_ids"]) == word
    assert tok.tokenize("Xylophone") == [tok.unk_token]
