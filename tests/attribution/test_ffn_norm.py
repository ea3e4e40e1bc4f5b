"""Attribution through a post-FFN norm (Gemma 2/3, OLMo 2): the frozen rule against a naive float64 reference
that holds the norm's scale the same way, completeness, and where the rule is recorded."""

from __future__ import annotations

import pytest
import torch

from attribution.reference import naive_integrated_gradients
from kneuron.attribution.estimators import GradientTimesActivation, IntegratedGradients, estimator_from_params
from kneuron.attribution.ffn_norm import effective_norm, with_effective_norm
from kneuron.attribution.integrated_gradients import integrated_gradients
from kneuron.attribution.knowledge import find_knowledge_neurons
from kneuron.errors import KneuronError
from kneuron.facts import encode
from kneuron.models.architectures import spec_for
from tiny_models import NORMED_FAMILIES, tiny_lm


def _rel_error(fast: torch.Tensor, slow: torch.Tensor) -> float:
    return float((fast - slow).abs().max() / slow.abs().max())


def test_the_registry_names_the_post_ffn_norm():
    for model_type in ("gemma2", "gemma3_text", "gemma3", "olmo2"):
        assert spec_for(model_type).ffn_output_norm == "post_feedforward_layernorm"
    for model_type in ("llama", "gemma", "olmo", "gpt2", "bert", "qwen3"):
        assert spec_for(model_type).ffn_output_norm is None


@pytest.mark.parametrize("family", NORMED_FAMILIES)
def test_the_path_resolves_on_a_tiny_model(family):
    lm = tiny_lm(family, layers=3)
    for layer in range(lm.n_layers):
        assert lm.ffn_output_norm(layer) is lm.block(layer).post_feedforward_layernorm


@pytest.mark.parametrize("family", NORMED_FAMILIES)
@pytest.mark.parametrize("norm", ["frozen", "live"])
@pytest.mark.parametrize("answer", ["Paris", "Copenhagen"])
@pytest.mark.parametrize("batch_rows", [None, 3])
def test_both_rules_match_the_naive_reference(family, norm, answer, batch_rows):
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    query = encode(lm, "The capital of France is", answer)
    fast = integrated_gradients(lm, query, steps=4, norm=norm, batch_rows=batch_rows)
    slow, clean, zero = naive_integrated_gradients(lm, query, steps=4, frozen_norm=norm == "frozen")
    # the norms compute in float32 inside a float64 model (Gemma's x.float()), hence 1e-6 and not 1e-12
    assert _rel_error(fast.scores, slow) < 1e-6
    assert fast.probability == pytest.approx(float(clean), rel=1e-9)
    assert torch.allclose(fast.baseline, zero, rtol=1e-9, atol=0)  # the same zero baseline under either rule
    assert fast.norm == norm


@pytest.mark.parametrize("family", NORMED_FAMILIES)
def test_frozen_is_the_default_and_differs_from_live(family):
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    query = encode(lm, "The capital of France is", "Paris")
    default = integrated_gradients(lm, query, steps=4)
    frozen = integrated_gradients(lm, query, steps=4, norm="frozen")
    live = integrated_gradients(lm, query, steps=4, norm="live")
    assert torch.equal(default.scores, frozen.scores)
    assert _rel_error(live.scores, frozen.scores) > 0.05


@pytest.mark.parametrize("family", NORMED_FAMILIES)
def test_frozen_scores_sum_to_each_layers_own_difference(family):
    """Completeness: with the scale held, the integrand is the gradient of a smooth path from P(0) to P(1), so a
    layer's scores sum to P(1) − P(0) as the steps grow; the literal (live) integral does not."""
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    query = encode(lm, "The capital of France is", "Paris")
    frozen = integrated_gradients(lm, query, steps=200, norm="frozen")
    live = integrated_gradients(lm, query, steps=200, norm="live")
    difference = frozen.probability - frozen.baseline
    frozen_gap = (frozen.completeness_gap.abs() / difference.abs()).max()
    live_gap = (live.completeness_gap.abs() / difference.abs()).max()
    assert frozen_gap < 0.02
    assert live_gap > 5 * frozen_gap


@pytest.mark.parametrize("family", NORMED_FAMILIES)
@pytest.mark.parametrize("norm", ["frozen", "live"])
def test_gradient_times_activation_is_one_point_ig_under_either_rule(family, norm):
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    prompts = ["The capital of France is", "France 's capital is"]
    gxa = GradientTimesActivation(norm=norm).attribute(lm, prompts, "Paris")
    for prompt, scores in zip(prompts, gxa, strict=True):
        one_point = integrated_gradients(lm, encode(lm, prompt, "Paris"), steps=1, norm=norm)
        assert _rel_error(scores.scores, one_point.scores) < 1e-6
        assert scores.norm == norm


def test_a_model_without_a_post_ffn_norm_has_nothing_to_freeze():
    lm = tiny_lm("llama", dtype=torch.float64, layers=3)
    query = encode(lm, "The capital of France is", "Paris")
    frozen = integrated_gradients(lm, query, steps=3, norm="frozen")
    live = integrated_gradients(lm, query, steps=3, norm="live")
    assert torch.equal(frozen.scores, live.scores)
    assert frozen.norm is None and effective_norm(lm, "live") is None
    assert with_effective_norm({"estimator": "ig", "norm": "live"}, lm) == {"estimator": "ig"}


def test_unknown_rule_is_one_line():
    with pytest.raises(KneuronError, match="Unknown norm rule 'fixed'"):
        IntegratedGradients(norm="fixed")


def test_params_record_the_rule_used():
    gemma = tiny_lm("gemma3", layers=3)
    llama = tiny_lm("llama", layers=3)
    prompts = ["The capital of France is", "France 's capital is"]
    found = find_knowledge_neurons(gemma, prompts, "Paris", steps=2)
    assert found.params["norm"] == "frozen"
    live = find_knowledge_neurons(gemma, prompts, "Paris", steps=2, estimator=IntegratedGradients(2, norm="live"))
    assert live.params["norm"] == "live"
    assert "norm" not in find_knowledge_neurons(llama, prompts, "Paris", steps=2).params
    # a run rebuilds its estimator from the params, the rule included
    assert estimator_from_params({"estimator": "ig", "steps": 2, "norm": "live"}) == IntegratedGradients(2, norm="live")
    assert estimator_from_params({"estimator": "gxa", "norm": "live"}).norm == "live"


def test_the_model_is_left_as_it_was_after_an_exception():
    lm = tiny_lm("gemma3", dtype=torch.float64, layers=3)
    query = encode(lm, "The capital of France is", "Paris")
    before = integrated_gradients(lm, query, steps=2)
    norm = lm.ffn_output_norm(1)

    def boom(*_args):
        raise RuntimeError("boom")

    handle = lm.block(2).register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        integrated_gradients(lm, query, steps=2)
    handle.remove()
    assert not norm._forward_hooks and not norm._forward_pre_hooks
    assert torch.equal(integrated_gradients(lm, query, steps=2).scores, before.scores)


def test_run_records_the_rule_and_refuses_to_mix_rules(tmp_path):
    from kneuron.facts import Fact
    from kneuron.store import Atlas, run

    lm = tiny_lm("gemma3", layers=3)
    fact = Fact("France", "capital", "Paris", ("The capital of [X] is [Y].", "[X] 's capital is [Y]."))
    path = tmp_path / "gemma.sqlite"
    run(lm, [fact], path, steps=2, known_only=False, progress=False)
    with Atlas.open(path, read_only=True) as atlas:
        assert atlas.meta["params"]["norm"] == "frozen"
        assert {s.norm for s in atlas.prompt_scores(fact.id)} == {"frozen"}
    with pytest.raises(KneuronError, match="norm: atlas 'frozen', this run 'live'"):
        run(lm, [fact], path, steps=2, known_only=False, progress=False, norm="live")
    with pytest.raises(KneuronError, match="norm='live' belongs to the estimator"):
        run(lm, [fact], tmp_path / "mixed.sqlite", estimator=IntegratedGradients(2), norm="live", progress=False)
    assert not (tmp_path / "mixed.sqlite").exists()
    llama_path = tmp_path / "llama.sqlite"
    run(tiny_lm("llama", layers=3), [fact], llama_path, steps=2, known_only=False, progress=False, norm="live")
    with Atlas.open(llama_path, read_only=True) as atlas:
        assert "norm" not in atlas.meta["params"]
