"""The log-probability increase ("lpi") against a slow, obviously-correct float64 loop over layers and neurons that
builds h + v explicitly, applies the frozen final norm by hand and calls the model's own head, on every tiny causal
family it supports; refusals for the others; layers=; the model restored, also after an exception."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from attribution.test_model_restored import assert_hooks_work, hooked, snapshot
from kneuron.attribution import LogProbIncrease, estimator_named, integrated_gradients
from kneuron.attribution.log_prob_increase import chunk_size
from kneuron.errors import KneuronError
from kneuron.facts import encode
from kneuron.models.architectures import direct_readout_problem, final_norm_of, head_projection_of, spec_for
from tiny_models import CAUSAL_FAMILIES, MLM_FAMILIES, tiny_lm

PROMPT = "The capital of France is"
#: causal families whose FFN output passes a norm before the residual: the direct readout is not defined
NORMED_FFN_OUTPUT = ("gemma2", "gemma3", "olmo2")
SUPPORTED = tuple(family for family in CAUSAL_FAMILIES if family not in NORMED_FFN_OUTPUT)


def _logit_factor(config) -> float:
    """What the model multiplies its head's logits by (Cohere's logit_scale, Granite's 1 / logits_scaling)."""
    return getattr(config, "logit_scale", 1.0) / getattr(config, "logits_scaling", 1.0)


def _by_hand(lm, x: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """log_softmax of the model's head applied to ``x`` normed with the scale frozen at ``final``, written out."""
    norm = final_norm_of(lm.spec, lm.model)
    config = lm.model.config
    if norm is not None:
        eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", lm.spec.norm_eps))
        if lm.spec.final_norm_kind == "rmsnorm":
            r = torch.sqrt((final**2).mean() + eps)
            y = x / r
        else:
            r = torch.sqrt(((final - final.mean()) ** 2).mean() + eps)
            y = (x - x.mean()) / r
        if getattr(norm, "weight", None) is not None:
            y = y * (lm.spec.norm_weight_offset + norm.weight)
        if getattr(norm, "bias", None) is not None:
            y = y + norm.bias
    else:
        y = x
    projection = head_projection_of(lm.spec, lm.model)
    if projection is not None:
        y = projection(y)
    head = lm.model.get_output_embeddings()
    logits = torch.nn.functional.linear(y, head.weight, head.bias)  # the head's weights, not its (hooked) forward
    logits = logits * _logit_factor(config)
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = cap * torch.tanh(logits / cap)
    return torch.log_softmax(logits, dim=-1)


def _block_outputs(lm, query, layer: int, ffn_outputs: torch.Tensor) -> torch.Tensor:
    """Block ``layer``'s output at the answer position when its FFN output projection's output there is replaced by
    each row of ``ffn_outputs`` ((rows, hidden), one batch row each): the model itself says what a block adds."""
    position, rows = query.position, ffn_outputs.shape[0]
    ids = query.input_ids[None].expand(rows, -1)
    seen = {}

    def replace(_module, _args, out):
        out = out.clone()
        if out.dim() == 2:  # OPT flattens (batch, seq)
            out[torch.arange(rows) * ids.shape[1] + position] = ffn_outputs.to(out.dtype)
        else:
            out[:, position] = ffn_outputs.to(out.dtype)
        return out

    def read(_module, _args, out):
        seen["out"] = (out[0] if isinstance(out, tuple) else out)[:, position].clone()

    handles = [lm.ffn_out(layer).register_forward_hook(replace), lm.block(layer).register_forward_hook(read)]
    try:
        with torch.no_grad():
            lm.model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return seen["out"]


def naive_log_prob_increase(lm, query, readout_tolerance: float = 1e-10) -> torch.Tensor:
    """log p(w | h + v_i) - log p(w | h), one neuron at a time, in float64: h is the block's output with its FFN
    output zeroed at the answer position, h + v_i its output with that FFN output replaced by a_i · w_i."""
    position, word = query.position, query.answer_ids[0]
    seen: dict = {}
    handles = []
    for layer in range(lm.n_layers):
        handles.append(lm.ffn_out(layer).register_forward_pre_hook(
            lambda m, a, layer=layer: seen.__setitem__(
                ("act", layer), (a[0][position] if a[0].dim() == 2 else a[0][0, position]).clone())))
    norm = final_norm_of(lm.spec, lm.model)
    if norm is not None:
        handles.append(norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("final", a[0][0, position])))
    try:
        with torch.no_grad():
            logits = lm.model(input_ids=query.input_ids[None]).logits[0, position]
    finally:
        for handle in handles:
            handle.remove()
    final = seen.get("final")
    scores = torch.zeros(lm.n_layers, lm.n_neurons, dtype=torch.float64)
    with torch.no_grad():
        if final is not None:  # the frozen readout of the clean final stream is the model's own readout
            assert torch.allclose(_by_hand(lm, final, final), torch.log_softmax(logits, -1), atol=readout_tolerance)
        for layer in range(lm.n_layers):
            values = seen["act", layer][:, None] * torch.stack(
                [lm.value_slot(layer, neuron) for neuron in range(lm.n_neurons)])
            outputs = _block_outputs(lm, query, layer, torch.cat([torch.zeros_like(values[:1]), values]))
            before = _by_hand(lm, outputs[0], final)[word]
            for neuron in range(lm.n_neurons):
                scores[layer, neuron] = _by_hand(lm, outputs[1 + neuron], final)[word] - before
    return scores


@pytest.mark.parametrize("family", SUPPORTED)
@pytest.mark.parametrize("answer", ["Paris", "Copenhagen"])  # one token; two tokens (only the first is read out)
def test_log_prob_increase_matches_its_naive_formula(family, answer):
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    query = encode(lm, PROMPT, answer)
    # a small budget: several neuron chunks per layer
    fast = LogProbIncrease(memory_budget=3 * 5 * 8 * lm.model.config.vocab_size).attribute(lm, [query])[0]
    slow = naive_log_prob_increase(lm, query)
    assert float((fast.scores - slow).abs().max()) < 1e-10 * (1 + float(slow.abs().max()))
    assert float(slow.abs().max()) > 1e-3  # the scores say something
    assert fast.estimator == "lpi" and fast.scores.dtype == torch.float64
    assert torch.isnan(fast.baseline).all() and fast.completeness_gap is None and not LogProbIncrease.has_completeness
    # the clean facts are those integrated gradients reports: joint probability, ranks, activations
    ig = integrated_gradients(lm, query, steps=1)
    assert math.isclose(fast.probability, ig.probability, rel_tol=1e-10)
    assert math.isclose(fast.log_probability, ig.log_probability, rel_tol=1e-10)
    assert fast.answer_ranks == ig.answer_ranks and fast.vocab_size == ig.vocab_size
    assert torch.allclose(fast.activations, ig.activations, atol=1e-12)


def test_chunks_and_prompts_share_each_layers_matrix_without_changing_scores():
    lm = tiny_lm("llama", dtype=torch.float64, layers=3)
    queries = [encode(lm, PROMPT, "Paris"), encode(lm, "Paris is the capital of", "France")]
    vocab = lm.model.config.vocab_size
    assert chunk_size(vocab, lm.n_neurons, torch.float64, 5 * 8 * vocab * 7) == 7
    whole = LogProbIncrease().attribute(lm, queries)
    chunked = LogProbIncrease(memory_budget=5 * 8 * vocab * 7).attribute(lm, queries)
    alone = [LogProbIncrease().attribute(lm, [query])[0] for query in queries]
    for a, b, c in zip(whole, chunked, alone, strict=True):
        assert torch.allclose(a.scores, b.scores, atol=1e-12) and torch.allclose(a.scores, c.scores, atol=1e-12)
    assert not torch.allclose(whole[0].scores, whole[1].scores)


def test_float32_model_scores_close_to_float64():
    query64 = encode(tiny_lm("gpt2", dtype=torch.float64), PROMPT, "Paris")
    lm32 = tiny_lm("gpt2")
    fast = LogProbIncrease().attribute(lm32, [encode(lm32, PROMPT, "Paris")])[0]
    exact = naive_log_prob_increase(tiny_lm("gpt2", dtype=torch.float64), query64)
    assert fast.scores.dtype == torch.float64
    assert float((fast.scores - exact).abs().max()) < 1e-4 * (1 + float(exact.abs().max()))


def test_layers_limits_the_scored_layers():
    lm = tiny_lm("qwen2", dtype=torch.float64, layers=3)
    full = LogProbIncrease().attribute(lm, PROMPT, "Paris")[0]
    seen = []
    part = estimator_named("lpi").attribute(lm, PROMPT, "Paris", layers=[2, 0],
                                            on_prompt=lambda i, s: seen.append(i))[0]
    assert seen == [0]
    assert torch.equal(part.scores[[0, 2]], full.scores[[0, 2]])
    assert (part.scores[1] == 0).all() and (full.scores[1] != 0).any()
    with pytest.raises(KneuronError, match="No layers"):
        LogProbIncrease().attribute(lm, PROMPT, "Paris", layers=[])


@pytest.mark.parametrize("family", MLM_FAMILIES)
def test_masked_models_are_refused_with_what_to_use(family):
    lm = tiny_lm(family)
    with pytest.raises(KneuronError, match=r"masked LM.*use --estimator gxa or ig"):
        LogProbIncrease().attribute(lm, "The capital of France is [Y].", "Paris")


@pytest.mark.parametrize("family", NORMED_FFN_OUTPUT)
def test_families_that_norm_the_ffn_output_are_refused(family):
    with pytest.raises(KneuronError, match=r"post_feedforward_layernorm.*use --estimator gxa or ig"):
        LogProbIncrease().attribute(tiny_lm(family), PROMPT, "Paris")


def test_olmo2_is_refused_but_olmo_is_not():
    from types import SimpleNamespace

    assert "post_feedforward_layernorm" in direct_readout_problem(spec_for("olmo2"),
                                                                  SimpleNamespace(model_type="olmo2"))
    assert direct_readout_problem(spec_for("olmo"), SimpleNamespace(model_type="olmo")) is None


def test_stablelm_parallel_residual_and_qk_layernorm_read_out_directly():
    """StableLM 2's blocks add the FFN output of the normed input as it is (use_parallel_residual: beside the
    attention output); qk_layernorm norms only inside the attention: the direct readout holds."""
    lm = tiny_lm("stablelm", dtype=torch.float64, layers=3, use_parallel_residual=True, qk_layernorm=True)
    assert lm.block(0).use_parallel_residual and lm.block(0).self_attn.qk_layernorm
    query = encode(lm, PROMPT, "Paris")
    fast = LogProbIncrease().attribute(lm, [query])[0]
    slow = naive_log_prob_increase(lm, query)
    assert float((fast.scores - slow).abs().max()) < 1e-10 * (1 + float(slow.abs().max()))
    assert float(slow.abs().max()) > 1e-3


def test_granite_multipliers_are_read_from_its_spec():
    """Granite multiplies each FFN output by residual_multiplier and divides the logits by logits_scaling (the
    tiny model sets 0.5 and 2): a spec without either scores differently, or is caught by the readout check."""
    import dataclasses

    lm = tiny_lm("granite", dtype=torch.float64, layers=3)
    query = encode(lm, PROMPT, "Paris")
    right = LogProbIncrease().attribute(lm, [query])[0].scores
    lm.spec = dataclasses.replace(lm.spec, ffn_output_multiplier=None)
    assert float((LogProbIncrease().attribute(lm, [query])[0].scores - right).abs().max()) > 1e-2
    lm.spec = dataclasses.replace(lm.spec, ffn_output_multiplier="residual_multiplier", logit_divisor=None)
    with pytest.raises(KneuronError, match="do not reproduce"):
        LogProbIncrease().attribute(lm, [query])


def test_bloom_with_a_normed_residual_is_refused():
    lm = tiny_lm("bloom", apply_residual_connection_post_layernorm=True)
    with pytest.raises(KneuronError, match=r"apply_residual_connection_post_layernorm=True.*use --estimator gxa"):
        LogProbIncrease().attribute(lm, PROMPT, "Paris")
    assert direct_readout_problem(lm.spec, tiny_lm("bloom").model.config) is None


def test_post_norm_opt_is_refused_and_opt_without_final_norm_reads_out_through_the_head():
    lm = tiny_lm("opt", dtype=torch.float64, layers=3)
    lm.model.config.do_layer_norm_before = False
    with pytest.raises(KneuronError, match="post-norm blocks"):
        LogProbIncrease().attribute(lm, PROMPT, "Paris")
    lm.model.config.do_layer_norm_before = True
    lm.model.model.decoder.final_layer_norm = None  # what _remove_final_layer_norm builds
    query = encode(lm, PROMPT, "Paris")
    fast = LogProbIncrease().attribute(lm, [query])[0]
    assert float((fast.scores - naive_log_prob_increase(lm, query)).abs().max()) < 1e-10


def test_a_spec_whose_readout_is_wrong_is_caught():
    import dataclasses

    lm = tiny_lm("llama", dtype=torch.float64)
    lm.spec = dataclasses.replace(lm.spec, norm_weight_offset=1.0)  # llama's norm is weight, not 1 + weight
    with pytest.raises(KneuronError, match="do not reproduce"):
        LogProbIncrease().attribute(lm, PROMPT, "Paris")


def test_estimator_by_name_and_params():
    assert estimator_named("lpi", steps=20) == LogProbIncrease()
    assert LogProbIncrease().params() == {"estimator": "lpi"}
    with pytest.raises(KneuronError):
        LogProbIncrease(memory_budget="lots")


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "falcon"])
def test_log_prob_increase_restores_everything_also_after_an_exception(family, monkeypatch):
    lm, calls = hooked(family)
    before = snapshot(lm.model)
    LogProbIncrease().attribute(lm, [PROMPT], "Paris")
    assert snapshot(lm.model) == before
    module = importlib.import_module("kneuron.attribution.log_prob_increase")

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(module, "_at_position", boom)  # inside a hook, mid-forward
    with pytest.raises(RuntimeError, match="boom"):
        LogProbIncrease().attribute(lm, [PROMPT], "Paris")
    assert snapshot(lm.model) == before
    assert_hooks_work(lm, calls)


def test_logit_softcapping_is_applied_where_the_config_sets_it():
    # no supported tiny family caps its logits (Gemma 2 does, and is refused): give llama a capping head
    lm = tiny_lm("llama", dtype=torch.float64, layers=3)
    lm.model.config.final_logit_softcapping = 2.0
    head = lm.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, a, out: 2.0 * torch.tanh(out / 2.0))
    try:
        query = encode(lm, PROMPT, "Paris")
        fast = LogProbIncrease(memory_budget=5 * 8 * lm.model.config.vocab_size * 10).attribute(lm, [query])[0]
        slow = naive_log_prob_increase(lm, query)
    finally:
        handle.remove()
    assert float((fast.scores - slow).abs().max()) < 1e-10 * (1 + float(slow.abs().max()))
    uncapped = LogProbIncrease().attribute(tiny_lm("llama", dtype=torch.float64, layers=3), [query])[0]
    assert float((fast.scores - uncapped.scores).abs().max()) > 1e-3
