"""Answers the model does not predict: scores stay finite and exact when P underflows float32 (below 1e-45),
and the result says where the answer ranks, so that its "knowledge neurons" are not taken for real ones."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from typer.testing import CliRunner

import kneuron.models
from attribution.reference import naive_integrated_gradients
from kneuron import cli
from kneuron.attribution import find_knowledge_neurons, integrated_gradients
from kneuron.facts import encode
from kneuron.models import from_model
from tiny_models import tiny_lm

PROMPTS = {"mlm": "The capital of France is [Y].", "causal": "The capital of France is"}


def _final_hidden(lm, query) -> torch.Tensor:
    """The output head's input at the answer's target position, clean."""
    head = lm.model.get_output_embeddings()
    seen = {}
    handle = head.register_forward_pre_hook(lambda _m, args: seen.update(h=args[0]))
    try:
        with torch.no_grad():
            lm.model(input_ids=query.input_ids[None])
    finally:
        handle.remove()
    return seen["h"][0, query.position].double()


def _log_prob(lm, query) -> float:
    with torch.no_grad():
        logits = lm.model(input_ids=query.input_ids[None]).logits[0, query.position].double()
    return float(torch.log_softmax(logits, -1)[query.answer_ids[0]])


def set_answer_log_prob(lm, query, target: float) -> None:
    """Move the answer's output-embedding row along the clean final hidden state until log P(answer) ≈ target."""
    head = lm.model.get_output_embeddings()
    h = _final_hidden(lm, query)
    for _ in range(6):
        gap = _log_prob(lm, query) - target
        with torch.no_grad():
            head.weight[query.answer_ids[0]] -= (gap * h / h.dot(h)).to(head.weight.dtype)
    assert abs(_log_prob(lm, query) - target) < 0.5


def unlikely_pair(family: str, log_p: float = -200.0):
    """The same tiny model in float64 and float32, where the answer's P is about e^log_p (1e-87)."""
    lm64 = tiny_lm(family, dtype=torch.float64, layers=3)
    query = encode(lm64, PROMPTS[lm64.kind], "Paris")
    set_answer_log_prob(lm64, query, log_p)
    lm32 = from_model(copy.deepcopy(lm64.model).float(), lm64.tokenizer, name=f"tiny-{family}-unlikely")
    return lm64, lm32, query


# Llama's RMSNorm computes in float32 (also in a float64 model, and in its backward), so the plain autograd
# gradient of a P of 1e-87 underflows to 0 even in float64: the float64 reference takes it in log space there
@pytest.mark.parametrize(("family", "log_space"), [("llama", True), ("gpt2", False), ("bert", False)])
def test_scores_of_a_probability_below_float32s_range_match_float64(family, log_space):
    lm64, lm32, query = unlikely_pair(family)
    slow, clean, _ = naive_integrated_gradients(lm64, query, steps=4, log_space=log_space)
    assert (slow != 0).any()
    assert 0 < float(clean) < 1e-45  # below the smallest float32 (1.4e-45): exp() of it in float32 is 0
    assert torch.exp(torch.tensor(math.log(float(clean)), dtype=torch.float32)) == 0
    fast32 = integrated_gradients(lm32, query, steps=4)
    assert torch.isfinite(fast32.scores).all() and (fast32.scores != 0).any()
    assert fast32.probability == pytest.approx(float(clean), rel=1e-3, abs=0)
    assert float((fast32.scores.double() - slow).abs().max() / slow.abs().max()) < 1e-3
    # and the float64 fast path stays exact
    fast64 = integrated_gradients(lm64, query, steps=4)
    assert float((fast64.scores - slow).abs().max() / slow.abs().max()) < 1e-6
    assert torch.isfinite(fast32.completeness_gap).all()


def test_plain_autograd_of_a_tiny_probability_underflows_even_in_a_float64_llama():
    """Why the gradients are taken in log space: the model's own float32 step (RMSNorm), not only float32 logits."""
    lm64, _, query = unlikely_pair("llama")
    plain, _, _ = naive_integrated_gradients(lm64, query, steps=2)
    logged, _, _ = naive_integrated_gradients(lm64, query, steps=2, log_space=True)
    assert (plain == 0).all() and (logged != 0).all()
    assert float((integrated_gradients(lm64, query, steps=2).scores - logged).abs().max() / logged.abs().max()) < 1e-6


def test_the_result_says_where_an_unlikely_answer_ranks():
    _, lm32, query = unlikely_pair("llama")
    scores = integrated_gradients(lm32, query, steps=3)
    vocab = lm32.model.config.vocab_size
    assert scores.answer_rank == vocab  # the lowest logit of all
    assert scores.vocab_size == vocab
    assert scores.warning is not None
    assert f"ranks {vocab} of {vocab}" in scores.warning and "say little" in scores.warning
    kn = find_knowledge_neurons(lm32, [PROMPTS["causal"], "The capital city of France is"], "Paris", steps=3)
    assert kn.neurons  # scores no longer all underflow to 0, so the list is not silently empty
    assert any(w.startswith("answer 'Paris' ranks") and "at prompt 1" in w for w in kn.warnings)


def test_a_likely_answer_has_no_warning():
    lm = tiny_lm("llama", layers=2)
    query = encode(lm, PROMPTS["causal"], "Paris")
    set_answer_log_prob(lm, query, -0.05)
    scores = integrated_gradients(lm, query, steps=3)
    assert scores.answer_rank == 1 and scores.warning is None
    assert find_knowledge_neurons(lm, [PROMPTS["causal"]], "Paris", steps=3).warnings == []


def _strict_json(text: str) -> dict:
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_find_warns_in_its_output_and_json(monkeypatch):
    _, lm32, _ = unlikely_pair("llama")
    monkeypatch.setattr(kneuron.models, "load", lambda model=None, **kwargs: lm32)
    args = ["find", "--model", "x", "--answer", "Paris", "--steps", "3", "--prompt", PROMPTS["causal"]]
    runner = CliRunner()
    result = runner.invoke(cli.app, [*args, "--json"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    payload = _strict_json(result.stdout)
    vocab = lm32.model.config.vocab_size
    assert payload["answer_ranks"] == [vocab]
    assert payload["warnings"] and f"ranks {vocab} of {vocab} at prompt 1" in payload["warnings"][0]
    assert 0 < payload["probabilities"][0] < 1e-80
    table = runner.invoke(cli.app, args, env={"COLUMNS": "200"})
    assert table.exit_code == 0
    assert f"ranks {vocab} of {vocab} at prompt 1" in table.stdout
