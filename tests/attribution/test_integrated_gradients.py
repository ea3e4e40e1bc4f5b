"""Integrated gradients: the fast path against the naive float64 reference, and IG's own properties."""

from __future__ import annotations

import importlib

import pytest
import torch

from attribution.reference import naive_integrated_gradients
from kneuron.attribution.integrated_gradients import alpha_points, integrated_gradients
from kneuron.attribution.step_rows import make_plan, memory_per_row
from kneuron.errors import FactError, KneuronError
from kneuron.facts import encode
from kneuron.models import NeuronPatch, patch
from tiny_models import CAUSAL_FAMILIES, FAMILIES, MLM_FAMILIES, NORMED_FAMILIES, SHARED_LAYER_FAMILIES, tiny_lm

PROMPTS = {"mlm": "The capital of France is [Y].", "causal": "The capital of France is"}


def _query(lm, answer: str = "Paris"):
    return encode(lm, PROMPTS[lm.kind], answer)


def _rel_error(fast: torch.Tensor, slow: torch.Tensor) -> float:
    return float((fast - slow).abs().max() / slow.abs().max())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("answer", ["Paris", "Copenhagen"])  # one token; two tokens (Copen ##hagen)
# the default puts all 12 rows in one batch (layers 1 and 2 join it at their own block); batches of 3
# rows split every layer's 4 steps, so batches start at different layers
@pytest.mark.parametrize("batch_rows", [None, 3])
def test_fast_path_matches_naive_reference(family, answer, batch_rows):
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    query = _query(lm, answer)
    assert len(query.answer_ids) == (1 if answer == "Paris" else 2)
    fast = integrated_gradients(lm, query, steps=4, batch_rows=batch_rows)
    # Gemma 2/3 and OLMo 2 hold their post-FFN norm's scale by default (tests/attribution/test_ffn_norm.py)
    slow, clean, zero = naive_integrated_gradients(lm, query, steps=4, frozen_norm=family in NORMED_FAMILIES)
    assert _rel_error(fast.scores, slow) < 1e-6
    assert fast.probability == pytest.approx(float(clean), rel=1e-9)
    assert torch.allclose(fast.baseline, zero, rtol=1e-9, atol=0)


#: block options of the registered families that the tiny models' defaults leave off
VARIANTS = [
    ("stablelm", dict(use_parallel_residual=True, qk_layernorm=True)),  # StableLM 2 12B
    ("bloom", dict(apply_residual_connection_post_layernorm=True)),
    ("modernbert", dict(global_attn_every_n_layers=1)),  # every layer global
    ("cohere", dict(use_qk_norm=True)),  # Command R+
]


@pytest.mark.parametrize("family, options", VARIANTS)
def test_fast_path_matches_naive_reference_on_block_variants(family, options):
    lm = tiny_lm(family, dtype=torch.float64, layers=3, **options)
    assert all(getattr(lm.model.config, key) == value for key, value in options.items())
    query = _query(lm, "Copenhagen")
    fast = integrated_gradients(lm, query, steps=4, batch_rows=3)
    slow, clean, _ = naive_integrated_gradients(lm, query, steps=4)
    assert _rel_error(fast.scores, slow) < 1e-6
    assert fast.probability == pytest.approx(float(clean), rel=1e-9)
    default = integrated_gradients(tiny_lm(family, dtype=torch.float64, layers=3), query, steps=4)
    assert _rel_error(default.scores, fast.scores) > 1e-3  # the option changes the model


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize("objective", ["prob", "logprob"])
@pytest.mark.parametrize("alphas", ["right", "midpoint", "linspace"])
def test_objectives_and_alpha_rules_match_reference(family, objective, alphas):
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    query = _query(lm, "Copenhagen")
    fast = integrated_gradients(lm, query, steps=5, objective=objective, alphas=alphas)
    slow, _, _ = naive_integrated_gradients(lm, query, steps=5, objective=objective, alphas=alphas)
    assert _rel_error(fast.scores, slow) < 1e-6


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert", "opt"])
def test_batch_size_and_memory_budget_do_not_change_scores(family):
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    query = _query(lm)
    reference = integrated_gradients(lm, query, steps=6)
    for rows in (1, 5, 21, 1000):
        other = integrated_gradients(lm, query, steps=6, batch_rows=rows)
        assert _rel_error(other.scores, reference.scores) < 1e-12
    one_row = memory_per_row(lm, make_plan(lm, query, "prob"))
    tight = integrated_gradients(lm, query, steps=6, memory_budget=int(one_row) + 1)  # one row per batch
    assert _rel_error(tight.scores, reference.scores) < 1e-12


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert", "qwen2"])
def test_completeness_gap_shrinks_as_steps_grow(family):
    lm = tiny_lm(family, dtype=torch.float64)
    query = _query(lm)
    coarse = integrated_gradients(lm, query, steps=2, alphas="midpoint")
    fine = integrated_gradients(lm, query, steps=64, alphas="midpoint")
    delta = fine.probability - fine.baseline
    # the gap is the error of the Riemann sum: tiny relative to what the layer moves, and shrinking
    assert (fine.completeness_gap.abs() <= 1e-3 * delta.abs() + 1e-12).all()
    assert fine.completeness_gap.abs().sum() < coarse.completeness_gap.abs().sum()
    assert torch.allclose(fine.scores.sum(-1), delta, rtol=1e-3, atol=1e-12)


def test_post_ffn_norm_makes_the_live_layer_scaling_degenerate():
    """Gemma 2/3 normalise the FFN output, so with the live norm P(alpha) is flat for alpha > 0 and jumps at 0:
    the scores no longer sum to P(1) - P(0) (the frozen default does: tests/attribution/test_ffn_norm.py)."""
    lm = tiny_lm("gemma2", dtype=torch.float64)
    scores = integrated_gradients(lm, _query(lm), steps=64, alphas="midpoint", norm="live")
    delta = scores.probability - scores.baseline
    assert (scores.completeness_gap.abs() > 0.5 * delta.abs()).all()


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_neuron_that_is_always_zero_scores_zero(family):
    lm = tiny_lm(family, dtype=torch.float64)
    query = _query(lm)
    with patch(lm, [NeuronPatch(1, 5, "set", 0.0), NeuronPatch(0, 7, "set", 0.0)]):
        scores = integrated_gradients(lm, query, steps=5)
    assert scores.scores[1, 5] == 0.0 and scores.scores[0, 7] == 0.0
    assert scores.activations[1, 5] == 0.0
    assert scores.scores.abs().sum() > 0


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "roberta"])
def test_same_input_gives_identical_scores(family):
    lm = tiny_lm(family)
    first = integrated_gradients(lm, PROMPTS[lm.kind], "Paris", steps=5)
    second = integrated_gradients(lm, PROMPTS[lm.kind], "Paris", steps=5)
    assert torch.equal(first.scores, second.scores)
    assert first.scores.dtype == torch.float64  # whatever the model's dtype (tiny P must not underflow)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_bfloat16_agrees_with_float32(family):
    lm32 = tiny_lm(family, layers=3)
    lm16 = tiny_lm(family, layers=3, dtype=torch.bfloat16)
    query = _query(lm32)
    a = integrated_gradients(lm32, query, steps=8).scores.flatten()
    b = integrated_gradients(lm16, query, steps=8).scores.flatten()
    assert b.dtype == torch.float64
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.95


def test_layers_subset_scores_only_those_layers():
    lm = tiny_lm("gpt2", dtype=torch.float64, layers=3)
    query = _query(lm)
    full = integrated_gradients(lm, query, steps=4)
    part = integrated_gradients(lm, query, steps=4, layers=[2])
    assert torch.equal(part.scores[:2], torch.zeros_like(part.scores[:2]))
    assert _rel_error(part.scores[2], full.scores[2]) < 1e-12
    assert torch.isnan(part.baseline[:2]).all()


@pytest.mark.parametrize("family", ["gpt2", "bert", "distilbert", "opt"])
@pytest.mark.parametrize("chosen", [[0, 2, 3], [3]])  # one batch; layer 1's block runs layer 0's rows / only the last
def test_layers_with_a_gap_share_a_batch_exactly(family, chosen):
    lm = tiny_lm(family, dtype=torch.float64, layers=4)
    query = _query(lm, "Copenhagen")
    part = integrated_gradients(lm, query, steps=3, layers=chosen)
    slow, _, zero = naive_integrated_gradients(lm, query, steps=3)
    assert torch.equal(part.scores[1], torch.zeros_like(part.scores[1]))
    for layer in chosen:
        assert _rel_error(part.scores[layer], slow[layer]) < 1e-6
        assert float(part.baseline[layer]) == pytest.approx(float(zero[layer]), rel=1e-9)


def test_scaling_keeps_the_model_unchanged():
    lm = tiny_lm("llama")
    ids = _query(lm).input_ids[None]
    before = lm.model(input_ids=ids).logits
    integrated_gradients(lm, PROMPTS["causal"], "Paris", steps=3)
    assert torch.equal(lm.model(input_ids=ids).logits, before)
    assert all(p.requires_grad for p in lm.model.parameters())
    assert all(not m._forward_pre_hooks and "forward" not in m.__dict__ for m in lm.model.modules())


def test_an_exception_midway_leaves_no_hooks(monkeypatch):
    lm = tiny_lm("gpt2", layers=3)
    rows = importlib.import_module("kneuron.attribution.step_rows")

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(rows, "answer_token_log_probs", boom)
    with pytest.raises(RuntimeError):
        integrated_gradients(lm, PROMPTS["causal"], "Paris", steps=3)
    assert all(not m._forward_pre_hooks and "forward" not in m.__dict__ for m in lm.model.modules())
    assert all(p.requires_grad for p in lm.model.parameters())


def test_alpha_points():
    assert alpha_points(4).tolist() == [0.25, 0.5, 0.75, 1.0]
    assert alpha_points(4, "midpoint").tolist() == [0.125, 0.375, 0.625, 0.875]
    assert alpha_points(3, "linspace").tolist() == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("family", [CAUSAL_FAMILIES[0], MLM_FAMILIES[0]])
def test_bad_input(family):
    lm = tiny_lm(family)
    with pytest.raises(KneuronError, match="steps"):
        integrated_gradients(lm, PROMPTS[lm.kind], "Paris", steps=0)
    with pytest.raises(FactError, match="empty"):
        integrated_gradients(lm, PROMPTS[lm.kind], "  ")
    with pytest.raises(KneuronError, match="answer"):
        integrated_gradients(lm, PROMPTS[lm.kind])
    with pytest.raises(KneuronError, match="objective"):
        integrated_gradients(lm, PROMPTS[lm.kind], "Paris", objective="loss")
    with pytest.raises(KneuronError, match="Layer 9"):
        integrated_gradients(lm, PROMPTS[lm.kind], "Paris", layers=[9])


def test_unknown_answer_on_masked_model_is_an_error():
    lm = tiny_lm("bert")
    with pytest.raises(FactError, match="vocabulary"):
        integrated_gradients(lm, PROMPTS["mlm"], "Xylophone")


def test_causal_template_without_text_before_answer_is_an_error():
    lm = tiny_lm("gpt2")
    with pytest.raises(FactError, match="before"):
        integrated_gradients(lm, "[Y] is the capital of France.", "Paris")


@pytest.mark.parametrize("rows", [1, 5, 7, 21, 22, 64, 1000])
def test_batches_cover_every_row_once_and_mix_only_whole_layers(rows):
    batches_of = importlib.import_module("kneuron.attribution.step_rows").batches
    per_layer = [(0.0, False)] + [(k / 20, True) for k in range(1, 21)]
    layer_rows = {layer: [(p, layer, a, s) for p in (0, 1) for a, s in per_layer] for layer in range(5)}
    batches = list(batches_of(layer_rows, rows))
    flat = [row for batch in batches for row in batch]
    assert sorted(flat) == sorted(row for own in layer_rows.values() for row in own)
    for batch in batches:
        assert 0 < len(batch) <= rows
        layers = {layer for _, layer, _, _ in batch}
        if len(layers) > 1:  # several layers share a batch only when each is whole
            assert all(sum(r[1] == layer for r in batch) == len(layer_rows[layer]) for layer in layers)
    if rows < len(layer_rows[0]):  # a split layer's batches differ in size by at most one
        sizes = [len(b) for b in batches if b[0][1] == 0]
        assert max(sizes) - min(sizes) <= 1


BAGS = {  # two prompts of one shape (and, masked, other mask positions), one of another, a third of the first
    "mlm": ["The capital of France is [Y].", "[Y] is the capital of France.", "The capital city of France is [Y].",
            "France has the capital [Y]."],
    "causal": ["The capital of France is", "The capital of Spain is", "The capital city of France is",
               "France's capital is"],
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("answer", ["Paris", "Copenhagen"])
@pytest.mark.parametrize("batch_rows", [None, 5])
def test_prompts_sharing_batches_score_as_one_by_one(family, answer, batch_rows, monkeypatch):
    ig = importlib.import_module("kneuron.attribution.integrated_gradients")
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    bag = BAGS[lm.kind]
    alone = [integrated_gradients(lm, prompt, answer, steps=3) for prompt in bag]
    chunks = []
    runner = "run_shared_rows" if lm.shared_layers else "run_rows"  # ALBERT's rows are full passes
    run_rows = getattr(ig, runner)

    def spy(lm, plans, chunk, *args, **kwargs):
        chunks.append(chunk)
        return run_rows(lm, plans, chunk, *args, **kwargs)

    monkeypatch.setattr(ig, runner, spy)
    reported = []
    together = ig.integrated_gradients_many(lm, bag, answer, steps=3, batch_rows=batch_rows,
                                            on_prompt=lambda i, s: reported.append((i, s)))
    assert any(len({row[0] for row in chunk}) > 1 for chunk in chunks)  # prompts did share a batch
    assert sorted(i for i, _ in reported) == list(range(len(bag)))
    assert all(s is together[i] for i, s in reported)
    for one, many in zip(alone, together, strict=True):
        assert many.prompt == one.prompt
        assert _rel_error(many.scores, one.scores) < 1e-10
        assert many.probability == pytest.approx(one.probability, rel=1e-12)
        assert torch.allclose(many.baseline, one.baseline, rtol=1e-12, atol=0)


# (not ALBERT: its rows are full forward passes, see attribution/shared_depths.py)
@pytest.mark.parametrize("family", [f for f in MLM_FAMILIES if f not in SHARED_LAYER_FAMILIES])
def test_masked_models_last_ffn_reads_only_the_answer_positions(family):
    lm = tiny_lm(family, dtype=torch.float64, layers=3)
    query = _query(lm, "Copenhagen")
    first_ffn = lm.ffn_out(2)
    widths = []
    handle = first_ffn.register_forward_pre_hook(lambda _m, args: widths.append(args[0].shape[1]))
    try:
        fast = integrated_gradients(lm, query, steps=3)
    finally:
        handle.remove()
    assert widths[0] == len(query.input_ids)  # the clean pass reads every position
    assert set(widths[1:]) == {len(query.answer_ids)}  # the rows' last FFN only the two masks
    slow, _, _ = naive_integrated_gradients(lm, query, steps=3)
    assert _rel_error(fast.scores, slow) < 1e-6
