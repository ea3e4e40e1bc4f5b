"""The estimator interface, gradient x activation and Gauss–Legendre integrated gradients: each against a slow,
obviously-correct float64 implementation of its own formula, on every tiny family."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from attribution.reference import naive_integrated_gradients
from attribution.test_model_restored import assert_hooks_work, hooked, snapshot
from kneuron.attribution import (
    GradientTimesActivation,
    IntegratedGradients,
    ScreenedIntegratedGradients,
    coarse_neurons,
    estimator_from_params,
    estimator_named,
    refine,
    screen_layers,
)
from kneuron.attribution.integrated_gradients import alpha_points, alpha_weights, integrated_gradients
from kneuron.errors import KneuronError
from kneuron.facts import encode
from kneuron.models.hooks import capture, on_ffn_input
from tiny_models import EAGER_ONLY, FAMILIES, NORMED_FAMILIES, tiny_lm

PROMPTS = {"mlm": "The capital of France is [Y].", "causal": "The capital of France is"}


def _rel_error(fast: torch.Tensor, slow: torch.Tensor) -> float:
    return float((fast - slow).abs().max() / slow.abs().max())


def naive_integrand(lm, query, alpha: float = 1.0, objective: str = "prob") -> torch.Tensor:
    """a x dP/d(alpha a) at one alpha, for every layer (one layer scaled at a time): a full forward of the whole
    input with that layer's activation at the answer position replaced by a leaf holding alpha times its clean
    value, then a backward. At alpha = 1 it is gradient x activation."""
    position = query.position
    with torch.no_grad(), capture(lm, positions=[position]) as acts:
        lm.model(input_ids=query.input_ids[None])
    rows = []
    for layer in range(lm.n_layers):
        clean = acts[layer][0, 0]
        leaf = (alpha * clean).clone().requires_grad_(True)

        def put(x, leaf=leaf):
            out = x.clone()
            out[0, position] = leaf
            return out

        with on_ffn_input(lm, layer, put):
            logits = lm.model(input_ids=query.input_ids[None]).logits[0]
        log_probs = torch.log_softmax(logits[list(query.target_positions)], dim=-1)
        log_p = log_probs[torch.arange(len(query.answer_ids)), torch.tensor(query.answer_ids)].sum()
        value = log_p.exp() if objective == "prob" else log_p
        rows.append(clean * torch.autograd.grad(value, leaf)[0])
    return torch.stack(rows)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("answer", ["Paris", "Copenhagen"])  # one token; two tokens
def test_gradient_times_activation_matches_its_naive_formula(family, answer):
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    query = encode(lm, PROMPTS[lm.kind], answer)
    # the naive formula is the literal gradient; Gemma 2/3 and OLMo 2's frozen default is checked against
    # one-point integrated gradients in tests/attribution/test_ffn_norm.py
    fast = GradientTimesActivation(norm="live").attribute(lm, [query])[0]
    slow = naive_integrand(lm, query)
    # 1e-6 as for integrated gradients: the eager attention of gpt_neo and gemma2 takes its softmax in float32
    assert _rel_error(fast.scores, slow) < 1e-6
    assert fast.estimator == "gxa" and fast.scores.dtype == torch.float64
    assert torch.isnan(fast.baseline).all() and fast.completeness_gap is None  # no completeness: absent, not NaN
    assert not GradientTimesActivation.has_completeness and IntegratedGradients.has_completeness
    # its scores are one-point (alpha = 1) integrated gradients, from one backward pass instead of one per layer
    one_point = integrated_gradients(lm, query, steps=1, norm="live")
    assert _rel_error(fast.scores, one_point.scores) < 1e-9
    assert math.isclose(fast.probability, one_point.probability, rel_tol=1e-12)
    assert fast.answer_ranks == one_point.answer_ranks


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_gradient_times_activation_logprob_and_layers(family):
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    query = encode(lm, PROMPTS[lm.kind], "Copenhagen")
    logprob = GradientTimesActivation("logprob").attribute(lm, [query])[0]
    assert _rel_error(logprob.scores, naive_integrand(lm, query, objective="logprob")) < 1e-9
    prob = GradientTimesActivation().attribute(lm, [query])[0]
    # d P / d a = P d log P / d a
    assert _rel_error(prob.scores, logprob.scores * prob.probability) < 1e-9
    some = GradientTimesActivation().attribute(lm, [query], layers=[2])[0]
    assert torch.equal(some.scores[:2], torch.zeros_like(some.scores[:2]))
    assert _rel_error(some.scores[2], prob.scores[2]) < 1e-12


def test_gauss_legendre_points_integrate_polynomials_exactly():
    for points in (1, 4, 5, 6):
        alphas, weights = alpha_points(points, "gauss"), alpha_weights(points, "gauss")
        assert ((alphas > 0) & (alphas < 1)).all()
        for degree in range(2 * points):  # exact up to degree 2m - 1
            assert math.isclose(float((weights * alphas ** degree).sum()), 1 / (degree + 1), rel_tol=1e-12)
        assert not math.isclose(float((weights * alphas ** (2 * points)).sum()), 1 / (2 * points + 1),
                                rel_tol=1e-9)
    assert alpha_weights(20, "right") is None


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "opt", "gemma2"])
def test_gauss_integrated_gradients_matches_its_naive_formula(family):
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    query = encode(lm, PROMPTS[lm.kind], "Copenhagen")
    fast = IntegratedGradients(steps=5, alphas="gauss", norm="live").attribute(lm, [query])[0]  # naive = live
    slow = torch.zeros_like(fast.scores)
    # the weighted sum of naive one-point integrands: each alpha's naive 1-step IG at that alpha
    alphas, weights = alpha_points(5, "gauss"), alpha_weights(5, "gauss")
    per_alpha, _, zero = naive_integrated_gradients(lm, query, steps=200, alphas="right")
    reference = per_alpha  # a 200-step Riemann sum of the same integral
    for alpha, weight in zip(alphas.tolist(), weights.tolist(), strict=True):
        slow += weight * naive_integrand(lm, query, alpha)
    # 1e-6 as for the 20-step rule: Llama's RMSNorm and eager attention compute in float32 in a float64 model
    assert _rel_error(fast.scores, slow) < 1e-6
    # and it is close to the 200-step sum: closer than the paper's 20-step sum is
    right20 = integrated_gradients(lm, query, steps=20, norm="live")
    assert _rel_error(fast.scores, reference) < _rel_error(right20.scores, reference)
    assert torch.allclose(fast.baseline, zero.double(), rtol=1e-9, atol=0)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_integrated_gradients_estimator_is_the_exact_path_unchanged(family):
    lm = tiny_lm(family, layers=3)
    prompts = [PROMPTS[lm.kind], PROMPTS[lm.kind].replace("capital", "main city")]
    through = IntegratedGradients(steps=4).attribute(lm, prompts, "Paris")
    direct = [integrated_gradients(lm, p, "Paris", steps=4) for p in prompts]
    for a, b in zip(through, direct, strict=True):
        assert torch.equal(a.scores, b.scores)
        assert a.estimator == "ig"


def test_screen_layers_ranks_by_each_layers_top_score_over_the_bag():
    class Fake:
        def __init__(self, rows):
            self.scores = torch.tensor(rows, dtype=torch.float64)

    bag = [Fake([[0.1, 0.0], [0.9, 0.2], [0.3, 0.0], [0.0, 0.5]]),
           Fake([[0.0, 0.2], [0.1, 0.1], [0.6, 0.0], [0.4, 0.0]])]
    assert screen_layers(bag, 1) == [1]          # 0.9
    assert screen_layers(bag, 2) == [1, 2]       # 0.9, 0.6
    assert screen_layers(bag, 3) == [1, 2, 3]    # then 0.5
    assert screen_layers(bag, 9) == [0, 1, 2, 3]
    with pytest.raises(KneuronError):
        screen_layers(bag, 0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_screened_integrated_gradients_is_exact_in_its_layers(family):
    lm = tiny_lm(family, dtype=torch.float64, layers=4)
    prompts = [PROMPTS[lm.kind], PROMPTS[lm.kind].replace("capital", "main city")]
    screened = ScreenedIntegratedGradients(2, IntegratedGradients(steps=4))
    bag = screened.attribute(lm, prompts, "Paris")
    chosen = list(bag[0].screen_layers)  # the result says which layers were chosen, for every prompt of the bag
    assert all(s.screen_layers == bag[0].screen_layers for s in bag) and not hasattr(screened, "chosen")
    assert chosen == screen_layers(GradientTimesActivation().attribute(lm, prompts, "Paris"), 2)
    full = IntegratedGradients(steps=4).attribute(lm, prompts, "Paris")
    others = [layer for layer in range(4) if layer not in chosen]
    for mine, theirs in zip(bag, full, strict=True):
        assert _rel_error(mine.scores[chosen], theirs.scores[chosen]) < 1e-12
        assert torch.equal(mine.scores[others], torch.zeros_like(mine.scores[others]))
    # when every prompt's maximum and coarse neurons lie in the chosen layers, the refined neurons agree
    if all(n.layer in chosen for s in full for n in coarse_neurons(s)):
        assert refine(bag).keys == refine(full).keys
    assert screened.params() == {"estimator": "ig", "steps": 4, "alphas": "right", "objective": "prob",
                                 "screen": 2, "screen_estimator": "gxa"}


def test_estimators_by_name_and_from_params():
    assert estimator_named("ig", steps=5, alphas="gauss") == IntegratedGradients(5, "gauss")
    assert estimator_named("gxa", steps=20, objective="logprob") == GradientTimesActivation("logprob")
    assert estimator_from_params({"steps": 20, "alphas": "right", "objective": "prob"}) == IntegratedGradients()
    screened = estimator_from_params({"estimator": "ig", "steps": 8, "screen": 3, "screen_estimator": "gxa"})
    assert isinstance(screened, ScreenedIntegratedGradients) and screened.k == 3 and screened.ig.steps == 8
    with pytest.raises(KneuronError, match="Unknown estimator 'nope'"):
        estimator_named("nope")
    with pytest.raises(KneuronError, match="alpha rule"):
        IntegratedGradients(alphas="trapezoid")
    with pytest.raises(KneuronError, match="objective"):
        GradientTimesActivation("probability")
    with pytest.raises(KneuronError, match="answer"):
        GradientTimesActivation().attribute(tiny_lm("llama"), ["The capital of France is"])


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_times_activation_restores_everything_also_after_an_exception(family, monkeypatch):
    lm, calls = hooked(family)
    before = snapshot(lm.model)
    GradientTimesActivation().attribute(lm, [PROMPTS[lm.kind]], "Paris")
    assert snapshot(lm.model) == before
    module = importlib.import_module("kneuron.attribution.gradient_times_activation")

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(module, "answer_token_log_probs", boom)
    with pytest.raises(RuntimeError, match="boom"):
        GradientTimesActivation().attribute(lm, [PROMPTS[lm.kind]], "Paris")
    assert snapshot(lm.model) == before
    assert_hooks_work(lm, calls)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_times_activation_batches_padded_prompts_exactly(family):
    """Prompts of different lengths and answer lengths, right-padded into shared batches, each get the scores of
    their own naive pass."""
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    base = PROMPTS[lm.kind]
    texts = [base, base.replace("The capital", "Everyone knows that the capital"), base.replace("capital", "seat")]
    queries = [encode(lm, text, answer) for text in texts for answer in ("Paris", "Copenhagen")]
    assert len({len(q.input_ids) for q in queries}) > 1 and len({len(q.answer_ids) for q in queries}) == 2
    together = GradientTimesActivation().attribute(lm, queries)
    one_by_one = [GradientTimesActivation().attribute(lm, [q])[0] for q in queries]
    # eager attention (gpt_neo, gemma2) takes its softmax in float32, also in a float64 model
    tolerance = 1e-6 if family in EAGER_ONLY else 1e-9
    for query, mine, alone in zip(queries, together, one_by_one, strict=True):
        assert _rel_error(mine.scores, alone.scores) < tolerance
        # Gemma 2/3 and OLMo 2 hold their post-FFN norm (the default): one-point IG with that rule, itself checked
        # against a naive reference that holds the norm the same way (tests/attribution/test_ffn_norm.py)
        expected = (integrated_gradients(lm, query, steps=1).scores if family in NORMED_FAMILIES
                    else naive_integrand(lm, query))
        assert _rel_error(mine.scores, expected) < 1e-6
        assert math.isclose(mine.probability, alone.probability, rel_tol=tolerance)
        assert mine.answer_ranks == alone.answer_ranks and mine.position == query.position
        assert _rel_error(mine.activations, alone.activations) < tolerance
