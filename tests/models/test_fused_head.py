"""The fused output head: the answer's log-probability and its gradient against log_softmax of the full logits, and
integrated gradients through it against the model's own head (float64, tiny models)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kneuron.attribution import step_rows
from kneuron.attribution.integrated_gradients import integrated_gradients
from kneuron.facts import encode
from kneuron.models import fused_head
from kneuron.models.fused_head import answer_log_probs, answer_log_probs_head, fusable_head
from kneuron.models.partial_forward import cache_layers, frozen_parameters, prefix_cache
from tiny_models import tiny_lm

PROMPTS = {"mlm": "The capital of France is [Y].", "causal": "The capital of France is"}


def _reference(x: torch.Tensor, head: nn.Linear, answers: torch.Tensor) -> torch.Tensor:
    """The obvious way: every logit, a log-softmax, a gather."""
    return torch.log_softmax(head(x), dim=-1).gather(-1, answers[..., None]).squeeze(-1)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, 50, 1000])  # one entry at a time, uneven chunks, one chunk, larger than V
def test_value_and_gradient_match_log_softmax(bias, chunk):
    torch.manual_seed(0)
    head = nn.Linear(12, 50, bias=bias, dtype=torch.float64).requires_grad_(False)
    head.weight.mul_(3.0)  # logits spread over tens of units: the running maximum moves from chunk to chunk
    x = torch.randn(4, 3, 12, dtype=torch.float64)
    answers = torch.randint(0, 50, (4, 3))
    fast_x, slow_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    fast, slow = answer_log_probs(fast_x, head, answers, chunk), _reference(slow_x, head, answers)
    assert torch.allclose(fast, slow, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(4, 3, dtype=torch.float64)
    (fast * upstream).sum().backward()
    (slow * upstream).sum().backward()
    assert torch.allclose(fast_x.grad, slow_x.grad, rtol=1e-10, atol=1e-12)


def test_large_logits_do_not_overflow():
    head = nn.Linear(2, 3, bias=False, dtype=torch.float32).requires_grad_(False)
    head.weight.copy_(torch.tensor([[1000.0, 0.0], [0.0, 1000.0], [0.0, 0.0]]))
    x = torch.tensor([[1.0, 0.99]])
    out = answer_log_probs(x, head, torch.tensor([1]), chunk=1)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, _reference(x, head, torch.tensor([1])))


def _unfused(monkeypatch):
    monkeypatch.setattr(step_rows, "fusable_head", lambda lm: False)


def _counting_fused_calls(monkeypatch) -> list[int]:
    """Count the rows that go through the fused head (so that a test sees the route it compares taken)."""
    calls: list[int] = []
    real = fused_head.answer_log_probs

    def counted(x, head, answers, chunk=None):
        calls.append(x.shape[0])
        return real(x, head, answers, chunk)

    monkeypatch.setattr(fused_head, "answer_log_probs", counted)
    return calls


@pytest.mark.parametrize("family", ["gemma3", "bert", "gpt2"])  # the sliding-window model; a head with a bias; tied
@pytest.mark.parametrize("chunk", [None, 5])
def test_integrated_gradients_through_the_fused_head_equal_the_models_head(family, chunk, monkeypatch):
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    query = encode(lm, PROMPTS[lm.kind], "Copenhagen")  # two answer tokens
    if chunk is not None:
        monkeypatch.setattr(fused_head, "CHUNK", chunk)  # several chunks of the tiny vocabulary
    calls = _counting_fused_calls(monkeypatch)
    fused = integrated_gradients(lm, query, steps=4)
    assert sum(calls) >= 3 * 4  # every (layer, α) row went through the fused head
    _unfused(monkeypatch)
    calls.clear()
    own = integrated_gradients(lm, query, steps=4)
    assert not calls
    assert float((fused.scores - own.scores).abs().max() / own.scores.abs().max()) < 1e-10
    assert torch.allclose(fused.baseline, own.baseline, rtol=1e-12, atol=0)
    assert fused.probability == own.probability


@pytest.mark.parametrize("family", ["gemma2", "granite", "cohere"])  # logit soft-capping, divisor, scale
def test_models_that_change_the_heads_output_keep_their_own_head(family, monkeypatch):
    lm = tiny_lm(family, dtype=torch.float64)
    query = encode(lm, PROMPTS[lm.kind], "Paris")
    with frozen_parameters(lm.model):
        assert fusable_head(lm)  # the head itself is a plain Linear, but the model changes its output
    assert not step_rows.make_plan(lm, query, "prob").fused_head
    gemma3 = tiny_lm("gemma3", dtype=torch.float64)  # which returns it unchanged
    assert step_rows.make_plan(gemma3, encode(gemma3, PROMPTS["causal"], "Paris"), "prob").fused_head
    calls = _counting_fused_calls(monkeypatch)
    integrated_gradients(lm, query, steps=2)
    assert not calls


def test_head_needs_frozen_weights_and_no_hooks_of_its_own():
    lm = tiny_lm("llama", dtype=torch.float64)
    assert not fusable_head(lm)  # its weights require a gradient outside frozen_parameters
    with frozen_parameters(lm.model):
        assert fusable_head(lm)
        handle = lm.model.get_output_embeddings().register_forward_hook(lambda *_: None)
        assert not fusable_head(lm)
        handle.remove()
    assert not fusable_head(tiny_lm("llama", dtype=torch.bfloat16))


def test_the_head_is_restored_after_an_exception():
    lm = tiny_lm("gemma3", dtype=torch.float64)
    head = lm.model.get_output_embeddings()
    before = dict(head.__dict__)
    with pytest.raises(RuntimeError), answer_log_probs_head(lm, lambda x: x, torch.tensor([[1]])):
        assert "forward" in head.__dict__
        raise RuntimeError
    assert head.__dict__.keys() == before.keys()
    assert all(head.__dict__[key] is value for key, value in before.items())


@pytest.mark.parametrize("family", ["gemma3", "gpt2"])
def test_the_prefix_cache_is_the_same_without_the_heads_logits(family):
    lm = tiny_lm(family, dtype=torch.float64)
    ids = encode(lm, PROMPTS["causal"], "Paris").input_ids[None, :-1]
    calls: list[tuple[int, ...]] = []
    handle = lm.model.get_output_embeddings().register_forward_hook(lambda _m, _a, out: calls.append(out.shape))
    with torch.no_grad():
        cache = prefix_cache(lm, ids)
        full = lm.model(input_ids=ids, use_cache=True).past_key_values
    handle.remove()
    assert calls[0][1] == 0 and calls[1][1] == ids.shape[1]  # no position through the head, then all of them
    for ours, theirs in zip(cache_layers(lm, cache), cache_layers(lm, full), strict=True):
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)

