"""The embedded SmolLM2-135M (and Gemma 3 270M when installed): real facts, the cache, the CLI.

SmolLM2 is loaded once per session by the ``smollm2`` fixture (tests/conftest.py). One test also
de-quantizes the GGUF file again (about 17 s) to check that kneuron's cached copy is exact.
Skip them all with ``pytest -m "not real_model"``.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from typer.testing import CliRunner

import kneuron
import kneuron.models
from kneuron import Fact, answer_probability, encode, top_predictions
from kneuron.cli import app
from kneuron.facts import answer_token_ids
from kneuron.models import loading

pytestmark = pytest.mark.real_model

TEXTS = ["The capital of France is", "Mozart was a famous", "Æsop's fables — naïve café, 東京, 1,234.5!"]


def test_shape_of_the_embedded_model(smollm2):
    assert smollm2.name == "smollm2-135m"
    assert (smollm2.spec.family, smollm2.kind) == ("llama", "causal")
    assert (smollm2.n_layers, smollm2.n_neurons) == (30, 1536)
    assert smollm2.dtype == torch.float32
    assert type(smollm2.ffn_out(0)).__name__ == "Linear"


def test_france_paris(smollm2):
    result = answer_probability(smollm2, "The capital of France is", "Paris")
    assert result.rank == 0
    assert result.probability > 0.5
    token, probability = top_predictions(smollm2, "The capital of France is", k=1)[0]
    assert token == " Paris" and probability == pytest.approx(result.probability, rel=1e-5)


def test_gold_au(smollm2):
    result = answer_probability(smollm2, "The chemical symbol for gold is", "Au")
    assert result.correct and result.probability > 0.5


def test_fact_templates(smollm2):
    fact = Fact("Japan", "capital", "Tokyo", ("The capital of [X] is [Y].", "[X]'s capital city is [Y]."))
    results = [answer_probability(smollm2, prompt, fact.object) for prompt in fact.prompts()]
    assert results[0].rank == 0
    assert all(0 < r.probability < 1 for r in results)


def test_multi_token_answer_is_the_teacher_forced_product(smollm2):
    ids = answer_token_ids(smollm2, kneuron.Prompt.from_text("The currency of Japan is the"), "yen")
    assert smollm2.tokenizer.convert_ids_to_tokens(ids) == ["Ġy", "en"]
    query = encode(smollm2, "The currency of Japan is the", "yen")
    result = answer_probability(smollm2, query)
    with torch.no_grad():
        prompt_ids = query.input_ids[: query.position + 1]
        first = torch.softmax(smollm2.model(input_ids=prompt_ids[None]).logits[0, -1], -1)[ids[0]]
        second_input = torch.cat([prompt_ids, torch.tensor(ids[:1])])
        second = torch.softmax(smollm2.model(input_ids=second_input[None]).logits[0, -1], -1)[ids[1]]
    assert result.probability == pytest.approx(float(first * second), rel=1e-4)
    assert math.prod(result.token_probabilities) == pytest.approx(result.probability, rel=1e-6)


@torch.no_grad()
def test_cached_load_is_bit_identical_to_the_gguf(smollm2_load, tmp_path, monkeypatch):
    """One GGUF de-quantization per session: the fixture's own (first run) or a fresh one here."""
    lm, converted = smollm2_load
    if not converted:
        _check_identical(kneuron.load(cache=False), lm)  # the fixture read the cache: de-quantize again
    elif loading._cached("smollm2-135m") is not None:
        _check_identical(lm, kneuron.load())  # the fixture de-quantized and wrote the cache: read it back
    else:  # the cache could not be written (read-only home): use one of our own, removed at the end
        monkeypatch.setenv("KNEURON_CACHE", str(tmp_path))
        try:
            _check_identical(lm, kneuron.load())
            assert loading._cached("smollm2-135m") is not None
            _check_identical(lm, kneuron.load())
        finally:
            shutil.rmtree(tmp_path, ignore_errors=True)


def _check_identical(cold, cached):
    for text in TEXTS:
        ids = cold.tokenizer(text, return_tensors="pt")["input_ids"]
        assert cached.tokenizer(text, return_tensors="pt")["input_ids"].equal(ids), text
        assert cached.tokenizer.decode(ids[0]) == cold.tokenizer.decode(ids[0])
        assert torch.equal(cached.model(input_ids=ids).logits, cold.model(input_ids=ids).logits), text
    for (name, a), (_, b) in zip(cold.model.state_dict().items(), cached.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_cli_predict_on_the_real_model(smollm2, monkeypatch):
    monkeypatch.setattr(kneuron.models, "load", lambda model=None, **kwargs: smollm2)
    result = CliRunner().invoke(app, ["predict", "--top", "3", "The capital of France is",
                                      "The chemical symbol for gold is"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    rows = [[c.strip() for c in line.split("│")] for line in result.stdout.splitlines() if "│" in line]
    assert len(rows) == 6
    assert rows[0][:2] == ["1", "' Paris'"] and float(rows[0][2]) > 0.5
    assert rows[3][:2] == ["1", "' Au'"] and float(rows[3][2]) > 0.5


def test_gemma3(gemma3):
    """Runs only when ``make gemma`` installed the package (cached load about 6 s, first load 40-100 s)."""
    assert (gemma3.spec.family, gemma3.n_layers, gemma3.n_neurons) == ("gemma3", 18, 2048)
    assert gemma3.tokenizer("x")["input_ids"][0] == gemma3.tokenizer.bos_token_id
    result = answer_probability(gemma3, "The official language of Brazil is", "Portuguese")
    assert result.rank == 0 and result.probability > 0.5
