"""patched_probabilities (many patch sets of many prompts, a causal prompt's prefix run once) against the plain
one-set-at-a-time answer_probabilities, on tiny float64 models of every family, for suppress, scale and mixed
patches, with one- and two-token answers, prompts of several shapes, sets split over passes and several prompts in
one pass; the studies that use it against by-hand numbers; the model unchanged after an exception midway."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kneuron.errors import KneuronError
from kneuron.interventions.edits import fingerprint
from kneuron.models import NeuronPatch, scale_patches, suppress_patches
from kneuron.studies.metrics import answer_probabilities, patched_probabilities, shares_prefix
from kneuron.studies.suppress_amplify import encode_facts
from studies.conftest import probability_by_hand
from tiny_models import EAGER_ONLY, FAMILIES, tiny_lm

SETS = [
    [],
    suppress_patches([(2, 3)]),
    suppress_patches([(0, 1), (2, 5)]),
    scale_patches([(1, 7), (2, 9)], 2.0),
    scale_patches([(0, 4)], 0.5) + suppress_patches([(2, 3)]),
    [NeuronPatch(1, 2, "add", 0.75), NeuronPatch(2, 11, "scale", -1.5)],
]


def queries_of(lm, facts):
    """Every prompt of France (one-token answer), Denmark (Copenhagen: two tokens) and Italy (another relation, other
    prompt lengths)."""
    encoded = encode_facts(lm, [facts[0], facts[2], facts[3]])
    return [q for fact_queries in encoded.values() for q in fact_queries]


def one_set_at_a_time(lm, queries, sets):
    return np.array([answer_probabilities(lm, queries, patches) for patches in sets])


def tolerance(family: str) -> float:
    # eager attention (gpt_neo, gemma2, bloom) takes its softmax in float32, whose rounding depends on the width
    return 1e-6 if family in EAGER_ONLY else 1e-9


@pytest.mark.parametrize("family", FAMILIES)
def test_equals_one_set_at_a_time_on_every_family(family, facts):
    lm = tiny_lm(family, layers=3, neurons=16, dtype=torch.float64)
    queries = queries_of(lm, facts)
    assert any(len(q.answer_ids) == 2 for q in queries) and any(len(q.answer_ids) == 1 for q in queries)
    alone = one_set_at_a_time(lm, queries, SETS)
    # 4 rows per pass: each prompt's 6 sets split over two passes (the prefix copied); 64: 10 prompts per pass
    for batch_size in (4, 64):
        together = patched_probabilities(lm, queries, SETS, batch_size=batch_size)
        assert together.shape == (len(SETS), len(queries))
        assert together == pytest.approx(alone, rel=tolerance(family))
    assert not np.allclose(alone[1:], alone[0])  # the patches do something
    assert np.array_equal(answer_probabilities(lm, queries), alone[0])  # and are gone afterwards


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_suppress_and_scale_against_hand_computation(family, facts):
    lm = tiny_lm(family, layers=3, neurons=16, dtype=torch.float64)
    neurons = [(2, 3), (0, 1)]
    measured = patched_probabilities(lm, queries_of(lm, facts), [[], suppress_patches(neurons),
                                                                  scale_patches(neurons, 2.0)], batch_size=5)
    prompts = [(fact, prompt) for fact in (facts[0], facts[2], facts[3]) for prompt in fact.prompts()]
    for column, (fact, prompt) in enumerate(prompts):
        expected = [probability_by_hand(lm, prompt, fact.object),
                    probability_by_hand(lm, prompt, fact.object, neurons, "set", 0.0),
                    probability_by_hand(lm, prompt, fact.object, neurons, "scale", 2.0)]
        assert measured[:, column] == pytest.approx(expected, rel=1e-9)


def test_prompts_of_one_shape_share_passes_and_the_prefix_runs_once(facts):
    """Causal prompts of the same length and answer positions share passes: one prefix pass for all of them, one
    pass for all their (prompt, set) rows; the prefix is never run again per set."""
    lm = tiny_lm("llama", layers=3, neurons=16, dtype=torch.float64)
    queries = queries_of(lm, facts)
    shapes = {(len(q), q.target_positions) for q in queries}
    assert len(shapes) < len(queries)  # some prompts share a shape
    assert all(shares_prefix(lm, q) for q in queries)
    lengths = []
    handle = lm.model.register_forward_pre_hook(lambda _m, _a, kwargs: lengths.append(kwargs["input_ids"].shape),
                                                with_kwargs=True)
    try:
        patched_probabilities(lm, queries, SETS, batch_size=len(SETS) * len(queries))
    finally:
        handle.remove()
    assert len(lengths) == 2 * len(shapes)  # per shape: the prefix, then every row from it
    rows = sorted(shape[0] for shape in lengths)
    members = sorted(sum(1 for q in queries if (len(q), q.target_positions) == s) for s in shapes)
    assert rows == sorted(members + [m * len(SETS) for m in members])


def test_masked_models_and_empty_inputs(facts):
    lm = tiny_lm("bert", layers=3, neurons=16, dtype=torch.float64)
    queries = queries_of(lm, facts)
    assert not any(shares_prefix(lm, q) for q in queries)
    assert patched_probabilities(lm, queries, []).shape == (0, len(queries))
    assert patched_probabilities(lm, [], SETS).shape == (len(SETS), 0)
    with pytest.raises(ValueError):
        patched_probabilities(lm, queries, SETS, batch_size=0)


class Boom(RuntimeError):
    pass


def _hook_count(lm) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) + len(m._forward_pre_hooks_with_kwargs)
               for m in lm.model.modules())


@pytest.mark.parametrize("family", ["llama", "gemma2", "bert"])
def test_model_unchanged_after_a_call_and_after_an_exception_midway(family, facts):
    lm = tiny_lm(family, layers=3, neurons=16, dtype=torch.float64)
    queries = queries_of(lm, facts)
    clean = answer_probabilities(lm, queries)
    before = fingerprint(lm, fresh=True)
    patched_probabilities(lm, queries, SETS, batch_size=4)
    assert fingerprint(lm, fresh=True) == before and _hook_count(lm) == 0
    calls = [0]

    def explode(*_args):  # raises inside a patched pass (after a prefix pass for a causal model)
        calls[0] += 1
        if calls[0] == 3:
            raise Boom("midway")

    handle = lm.block(lm.n_layers - 1).register_forward_pre_hook(explode)
    try:
        with pytest.raises(Boom):
            patched_probabilities(lm, queries, SETS, batch_size=4)
    finally:
        handle.remove()
    assert fingerprint(lm, fresh=True) == before and _hook_count(lm) == 0
    assert np.array_equal(answer_probabilities(lm, queries), clean)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_a_bad_patch_is_refused_before_any_pass(family, facts):
    lm = tiny_lm(family, layers=3, neurons=16, dtype=torch.float64)
    passes = []
    handle = lm.model.register_forward_pre_hook(lambda *_args: passes.append(1))
    try:
        with pytest.raises(KneuronError):
            patched_probabilities(lm, queries_of(lm, facts), [[], suppress_patches([(0, 99)])])
    finally:
        handle.remove()
    assert not passes and _hook_count(lm) == 0
