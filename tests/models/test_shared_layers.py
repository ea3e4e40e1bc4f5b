"""Shared layers (ALBERT: one layer's weights run at every depth): a neuron is (depth, index), and every hook
acts at its own depth only. Checked against ALBERT's forward written out by hand, depth by depth."""

from __future__ import annotations

import pytest
import torch

from kneuron.models import NeuronPatch, capture, on_ffn_input, patch
from kneuron.models.architectures import albert_depths
from kneuron.models.hooks import at_depth
from tiny_models import tiny_config, tiny_lm

IDS = torch.tensor([[2, 30, 40, 50, 4, 60, 3], [2, 31, 41, 51, 4, 61, 3]])


def by_hand(lm, ids: torch.Tensor, change=None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """ALBERT's encoder loop written out: each depth's FFN activations (after ``change(depth, acts)``, which may
    return a replacement) and the final hidden states. Calls the layer's submodules, never the layer itself."""
    albert = lm.model.albert
    hidden = albert.encoder.embedding_hidden_mapping_in(albert.embeddings(input_ids=ids))
    acts = []
    for depth in range(lm.model.config.num_hidden_layers):
        layer = albert.encoder.albert_layer_groups[0].albert_layers[0]
        attention = layer.attention(hidden, None)[0]
        act = layer.activation(layer.ffn(attention))
        if change is not None:
            act = change(depth, act)
        acts.append(act)
        hidden = layer.full_layer_layer_norm(layer.ffn_output(act) + attention)
    return acts, hidden


def test_one_module_serves_every_depth():
    lm = tiny_lm("albert", layers=4)
    assert lm.n_layers == 4 and lm.shared_layers
    assert len({id(lm.block(d)) for d in range(4)}) == 1
    assert [lm.occurrence(d) for d in range(4)] == [0, 1, 2, 3]
    assert lm.sharing(2) == (0, 1, 2, 3)
    assert lm.value_slot(0, 5).data_ptr() == lm.value_slot(3, 5).data_ptr()
    assert not tiny_lm("bert").shared_layers and tiny_lm("bert").sharing(1) == (1,)


def test_groups_and_inner_layers_follow_the_albert_loop():
    """6 depths over 2 groups of 2 inner layers: depth i runs all of group int(i / 3)'s layers, so 12 FFN calls."""
    from transformers import AlbertForMaskedLM

    config = tiny_config("albert", layers=6)
    config.num_hidden_groups, config.inner_group_num = 2, 2
    model = AlbertForMaskedLM(config)
    groups = model.albert.encoder.albert_layer_groups
    order = albert_depths(groups, config)
    expected = [groups[0].albert_layers[0], groups[0].albert_layers[1]] * 3 + \
               [groups[1].albert_layers[0], groups[1].albert_layers[1]] * 3
    assert [id(m) for m in order] == [id(m) for m in expected]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_capture_reads_each_depth(dtype):
    lm = tiny_lm("albert", dtype=dtype)
    with torch.no_grad():
        expected, _ = by_hand(lm, IDS)
        with capture(lm) as acts:
            lm.model(input_ids=IDS)
    assert sorted(acts) == [0, 1, 2]
    for depth in range(3):
        assert torch.equal(acts[depth], expected[depth]), depth
    assert not torch.allclose(acts[0], acts[1])


def test_patch_changes_its_depth_only():
    lm = tiny_lm("albert", dtype=torch.float64)

    def set_neuron_at_depth_one(depth, act):
        if depth != 1:
            return act
        out = act.clone()
        out[:, 4, 7] = 3.0
        return out

    with torch.no_grad():
        expected, hidden = by_hand(lm, IDS, set_neuron_at_depth_one)
        with patch(lm, [NeuronPatch(1, 7, "set", 3.0)], positions=4), capture(lm) as acts:
            out = lm.model.albert(input_ids=IDS).last_hidden_state
        clean, _ = by_hand(lm, IDS)
    for depth in range(3):
        assert torch.equal(acts[depth], expected[depth]), depth
    torch.testing.assert_close(out, hidden, rtol=1e-12, atol=1e-12)
    assert torch.equal(acts[0], clean[0]) and not torch.allclose(acts[2], clean[2])


def test_the_count_survives_a_submodule_pass_and_a_pass_cut_short():
    """Passes of lm.model.albert (no forward of lm.model to restart the count) wrap around after all depths; a
    pass an exception stops at depth 0 is forgotten at the next forward of lm.model."""
    lm = tiny_lm("albert", dtype=torch.float64)
    with torch.no_grad():
        expected, _ = by_hand(lm, IDS)
        one, _ = by_hand(lm, IDS[:1])
    seen: list[torch.Tensor] = []
    calls = [0]

    def record_or_fail(x):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("cut short")
        seen.append(x.detach().clone())

    with torch.no_grad(), capture(lm, layers=[2]) as acts, on_ffn_input(lm, 0, record_or_fail):
        lm.model.albert(input_ids=IDS)
        lm.model.albert(input_ids=IDS)
        with pytest.raises(RuntimeError, match="cut short"):
            lm.model(input_ids=IDS)
        lm.model(input_ids=IDS)
        lm.model.albert(input_ids=IDS[:1])
    assert len(seen) == 4
    for got in seen[:3]:
        assert torch.equal(got, expected[0])
    assert torch.equal(seen[3], one[0])
    assert torch.equal(acts[2], one[2])


def test_hooks_leave_nothing_behind_after_an_exception():
    """Every module's __dict__, hook dicts and torch's global hooks as they were (test_model_restored's snapshot),
    after an exception in the body of each hook context and inside a hook mid-forward."""
    from attribution.test_model_restored import snapshot
    from kneuron.models.partial_forward import record_block_inputs

    lm = tiny_lm("albert")
    before = snapshot(lm.model)
    with pytest.raises(RuntimeError), at_depth(lm, 1) as current:
        assert not current()
        raise RuntimeError("inside")
    with pytest.raises(RuntimeError), patch(lm, [NeuronPatch(2, 1)]), capture(lm, detach=False):
        lm.model(input_ids=IDS)
        raise RuntimeError("inside")
    with pytest.raises(RuntimeError), record_block_inputs(lm, {}):
        lm.model(input_ids=IDS)
        raise RuntimeError("inside")

    def fail(_x):
        raise RuntimeError("in the hook")

    with pytest.raises(RuntimeError, match="in the hook"), capture(lm), on_ffn_input(lm, 1, fail):
        lm.model(input_ids=IDS)
    assert snapshot(lm.model) == before


def test_block_inputs_are_recorded_per_depth():
    """make_plan's clean block inputs (what its rows would start from) are each depth's, not the last call's."""
    from kneuron.attribution.step_rows import make_plan
    from kneuron.facts import encode

    lm = tiny_lm("albert", dtype=torch.float64)
    query = encode(lm, "The capital of France is [Y].", "Paris")
    plan = make_plan(lm, query, "prob")
    albert = lm.model.albert
    layer = albert.encoder.albert_layer_groups[0].albert_layers[0]
    with torch.no_grad():
        hidden = albert.encoder.embedding_hidden_mapping_in(albert.embeddings(input_ids=query.input_ids[None]))
        for depth in range(3):
            assert torch.equal(plan.block_inputs[depth], hidden), depth
            hidden = layer(hidden)
    expected, _ = by_hand(lm, query.input_ids[None])
    assert torch.equal(plan.activations, torch.stack([a[0, query.position] for a in expected]))
