"""Neuron hooks on every family: capture reads the FFN output projection's input exactly, patch changes
exactly the patched units, and neither leaves anything behind, also when the body raises."""

from __future__ import annotations

import functools

import pytest
import torch

from kneuron.errors import InputError, NeuronIndexError
from kneuron.models import NeuronPatch, capture, on_ffn_input, patch, scale_patches, suppress_patches
from kneuron.models.hooks import forward_hook, patch_rows
from tiny_models import tiny_lm

BATCH, SEQ = 2, 7


@functools.cache
def _lm64(family: str):
    """One float64 tiny model per family, shared by the read-only tests of this file."""
    return tiny_lm(family, dtype=torch.float64)


@pytest.fixture
def lm(family):
    model = _lm64(family)
    assert _hook_count(model) == 0
    yield model
    assert _hook_count(model) == 0, "a test left hooks on the shared model"


def _ids(lm, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    n_special = len(lm.tokenizer.all_special_ids)
    return torch.randint(n_special, len(lm.tokenizer), (BATCH, SEQ), generator=generator)


@torch.no_grad()
def _logits(lm, ids) -> torch.Tensor:
    return lm.model(input_ids=ids).logits


def _hook_count(lm) -> int:
    return sum(
        len(m._forward_pre_hooks) + len(m._forward_hooks) + len(m._forward_pre_hooks_with_kwargs)
        for m in lm.model.modules()
    )


@torch.no_grad()
def _clean_acts(lm, ids):
    with capture(lm) as acts:
        lm.model(input_ids=ids)
    return acts


# ----------------------------------------------------------------------------------------------- capture


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_captured_activation_reproduces_ffn_output_exactly(family, dtype):
    lm = _lm64(family) if dtype == torch.float64 else tiny_lm(family)
    ids = _ids(lm)
    calls: dict[int, list[torch.Tensor]] = {}  # each output projection's outputs, in call order
    # clone: some blocks (Falcon) add to the FFN output in place afterwards
    handles = [
        module.register_forward_hook(lambda m, _a, out: calls.setdefault(id(m), []).append(out.detach().clone()))
        for module in {id(lm.ffn_out(layer)): lm.ffn_out(layer) for layer in range(lm.n_layers)}.values()
    ]
    try:
        with torch.no_grad(), capture(lm, positions=None) as acts:
            lm.model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    # depth l is its module's call number lm.occurrence(l) (always its only call, but for shared layers: ALBERT)
    outputs = {layer: calls[id(lm.ffn_out(layer))][lm.occurrence(layer)] for layer in range(lm.n_layers)}
    assert all(len(calls[id(lm.ffn_out(layer))]) == len(lm.sharing(layer)) for layer in range(lm.n_layers))
    assert sorted(acts) == list(range(lm.n_layers))
    for layer in range(lm.n_layers):
        assert acts[layer].shape == (BATCH, SEQ, lm.n_neurons)  # also for OPT, whose block flattens tokens
        assert acts[layer].dtype == dtype
        module_out = outputs[layer]
        with torch.no_grad():
            pushed = lm.ffn_out(layer)(acts[layer].reshape(-1, lm.n_neurons) if module_out.dim() == 2
                                       else acts[layer])
        assert torch.equal(pushed, module_out), f"layer {layer}"


def test_stack_and_layer_subset(lm):
    ids = _ids(lm)
    full = _clean_acts(lm, ids)
    assert full.stack().shape == (lm.n_layers, BATCH, SEQ, lm.n_neurons)
    with torch.no_grad(), capture(lm, layers=[1]) as acts:
        lm.model(input_ids=ids)
    assert list(acts) == [1]
    assert torch.equal(acts[1], full[1])


@pytest.mark.parametrize(
    "positions, index",
    [
        (3, [3]),
        (-1, [SEQ - 1]),
        ([0, 2, -1], [0, 2, SEQ - 1]),
        ((1, 4), [1, 4]),
    ],
)
def test_capture_positions(lm, positions, index):
    ids = _ids(lm)
    full = _clean_acts(lm, ids)
    with torch.no_grad(), capture(lm, positions=positions) as acts:
        lm.model(input_ids=ids)
    for layer in range(lm.n_layers):
        assert torch.equal(acts[layer], full[layer][:, index])


def test_capture_per_row_positions(lm):
    ids = _ids(lm)
    full = _clean_acts(lm, ids)
    rows = torch.tensor([2, 5])
    with torch.no_grad(), capture(lm, positions=rows) as acts:
        lm.model(input_ids=ids)
    for layer in range(lm.n_layers):
        assert acts[layer].shape == (BATCH, 1, lm.n_neurons)
        assert torch.equal(acts[layer][0, 0], full[layer][0, 2])
        assert torch.equal(acts[layer][1, 0], full[layer][1, 5])


@pytest.mark.parametrize("positions", [-1, [1, 3], "per-row"])
def test_capture_keeps_graph_when_asked(family, positions):
    """detach=False: gradients with respect to the captured slice equal those of the full activation."""
    lm = _lm64(family)
    ids = _ids(lm)
    arg, mask = _resolve_positions(positions)
    clean = _logits(lm, ids)
    with capture(lm, positions=None, detach=False) as full:
        out = lm.model(input_ids=ids).logits
    assert torch.equal(out, clean)
    full_grads = torch.autograd.grad(out.square().sum(), [full[layer] for layer in range(lm.n_layers)])
    with capture(lm, positions=arg, detach=False) as acts:
        out = lm.model(input_ids=ids).logits
    assert torch.equal(out, clean)  # continuing from the captured copy changes no value
    grads = torch.autograd.grad(out.square().sum(), [acts[layer] for layer in range(lm.n_layers)])
    for layer, (grad, full_grad) in enumerate(zip(grads, full_grads, strict=True)):
        expected = full_grad[mask].view(BATCH, -1, lm.n_neurons)
        torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12, msg=f"layer {layer}")
        assert grad.abs().sum() > 0
    with torch.no_grad(), capture(lm, layers=[0]) as acts:
        lm.model(input_ids=ids)
    assert not acts[0].requires_grad
    assert _hook_count(lm) == 0


def test_gated_neuron_is_act_gate_times_up():
    """For Llama-style FFNs the neuron is act(gate(x)) * up(x), not the gate activation alone."""
    for family in ("llama", "gemma", "phi3"):
        lm = _lm64(family)
        mlp = lm.block(0).mlp
        seen: dict[str, torch.Tensor] = {}
        handle = mlp.register_forward_pre_hook(lambda _m, args, seen=seen: seen.__setitem__("x", args[0].clone()))
        try:
            acts = _clean_acts(lm, _ids(lm))
        finally:
            handle.remove()
        x = seen["x"]
        with torch.no_grad():
            if hasattr(mlp, "gate_up_proj"):  # Phi-3 fuses the two projections
                gate, up = mlp.gate_up_proj(x).chunk(2, dim=-1)
                expected = mlp.activation_fn(gate) * up
            else:
                expected = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
        torch.testing.assert_close(acts[0], expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------- patch

OPS = [("set", 5.0), ("scale", 3.0), ("add", 2.0)]
POSITIONS = [None, 4, [1, -1], "per-row"]


def _resolve_positions(positions):
    """(positions argument, boolean mask of the (BATCH, SEQ) cells it selects)."""
    mask = torch.zeros(BATCH, SEQ, dtype=torch.bool)
    if positions is None:
        mask[:] = True
        return None, mask
    if positions == "per-row":
        rows = torch.tensor([2, 5])
        mask[0, 2] = mask[1, 5] = True
        return rows, mask
    mask[:, positions] = True
    return positions, mask


@pytest.mark.parametrize("positions", POSITIONS, ids=["all", "int", "list", "per-row"])
@pytest.mark.parametrize("op, value", OPS)
def test_patch_changes_exactly_the_patched_neuron(lm, op, value, positions):
    ids = _ids(lm)
    clean_logits = _logits(lm, ids)
    clean = _clean_acts(lm, ids)
    layer, neuron = lm.n_layers - 1, 5
    arg, mask = _resolve_positions(positions)
    # patch's pre-hook is registered before capture's, so capture sees the patched activation
    with torch.no_grad(), patch(lm, [NeuronPatch(layer, neuron, op, value)], positions=arg), capture(lm) as acts:
        patched_logits = lm.model(input_ids=ids).logits
    assert not torch.equal(patched_logits, clean_logits)
    for other in range(layer):  # nothing below the patched layer changes
        assert torch.equal(acts[other], clean[other])
    before, after = clean[layer], acts[layer]
    untouched = torch.ones_like(before, dtype=torch.bool)
    untouched[..., neuron] = ~mask
    assert torch.equal(after[untouched], before[untouched])
    expected = {"set": torch.full_like(before[..., neuron], value), "scale": before[..., neuron] * value,
                "add": before[..., neuron] + value}[op]
    assert torch.equal(after[..., neuron][mask], expected[mask])
    assert not torch.equal(after[..., neuron][mask], before[..., neuron][mask])
    assert _hook_count(lm) == 0


def test_patch_first_layer_changes_later_layers_only_from_the_patched_position_on(lm):
    """Patching layer 0 at position p changes later layers; in a causal model not at positions < p."""
    ids = _ids(lm)
    clean = _clean_acts(lm, ids)
    with torch.no_grad(), patch(lm, suppress_patches([(0, 3), (0, 7)]), positions=4), capture(lm) as acts:
        lm.model(input_ids=ids)
    last = lm.n_layers - 1
    assert not torch.equal(acts[last][:, 4:], clean[last][:, 4:])
    if lm.kind == "causal":
        torch.testing.assert_close(acts[last][:, :4], clean[last][:, :4], rtol=1e-12, atol=1e-12)
    else:
        assert not torch.allclose(acts[last][:, :4], clean[last][:, :4])


def test_capture_registered_before_patch_sees_the_clean_activation(lm):
    ids = _ids(lm)
    clean = _clean_acts(lm, ids)
    with torch.no_grad(), capture(lm) as acts, patch(lm, scale_patches([(0, 1)], 0.0)):
        lm.model(input_ids=ids)
    assert torch.equal(acts[0], clean[0])


def test_several_patches_and_layers(lm):
    ids = _ids(lm)
    clean = _clean_acts(lm, ids)
    patches = [NeuronPatch(0, 0, "set", 1.5), NeuronPatch(0, 9, "scale", -2.0), NeuronPatch(1, 9, "add", 0.25)]
    with torch.no_grad(), patch(lm, patches, positions=-1), capture(lm, positions=-1) as acts:
        lm.model(input_ids=ids)
    assert torch.equal(acts[0][..., 0], torch.full_like(acts[0][..., 0], 1.5))
    assert torch.equal(acts[0][..., 9], clean[0][:, -1:, 9] * -2.0)
    assert torch.equal(acts[0][..., 1:9], clean[0][:, -1:, 1:9])


def test_patch_applies_to_every_forward_inside_the_block(lm):
    ids = _ids(lm)
    with torch.no_grad(), patch(lm, [NeuronPatch(0, 2, "set", 4.0)]):
        first, second = _logits(lm, ids), _logits(lm, ids)
    assert torch.equal(first, second)
    assert not torch.equal(first, _logits(lm, ids))


def test_scale_by_one_and_add_zero_change_nothing(lm):
    ids = _ids(lm)
    clean = _logits(lm, ids)
    with patch(lm, [NeuronPatch(0, 2, "scale", 1.0), NeuronPatch(1, 3, "add", 0.0)]):
        assert torch.equal(_logits(lm, ids), clean)


@pytest.mark.parametrize("positions", POSITIONS, ids=["all", "int", "list", "per-row"])
def test_patch_rows_gives_each_row_what_patch_gives_it(lm, positions):
    """Row r under patch_rows equals row r of the same batch under patch(patches of r), bit for bit."""
    ids = _ids(lm)
    arg, _ = _resolve_positions(positions)
    last = lm.n_layers - 1
    per_row = [[NeuronPatch(last, 5, "set", 0.0), NeuronPatch(0, 2, "add", 1.5)], [NeuronPatch(last, 7, "scale", -2.0)]]
    with torch.no_grad(), patch_rows(lm, per_row, positions=arg):
        together = lm.model(input_ids=ids).logits
    for r, patches in enumerate(per_row):
        with torch.no_grad(), patch(lm, patches, positions=arg):
            alone = lm.model(input_ids=ids).logits
        assert torch.equal(together[r], alone[r])
    assert not torch.equal(together[0], _logits(lm, ids)[0])
    # a row without patches is the clean row
    with torch.no_grad(), patch_rows(lm, [[], per_row[1]], positions=arg):
        assert torch.equal(lm.model(input_ids=ids).logits[0], _logits(lm, ids)[0])


def test_patch_rows_refuses_another_batch_size_and_leaves_nothing(lm):
    ids = _ids(lm)
    before = _logits(lm, ids)
    with pytest.raises(InputError, match="3 rows but the batch has 2"), torch.no_grad(), \
            patch_rows(lm, [suppress_patches([(0, 1)])] * 3, positions=-1):
        lm.model(input_ids=ids)
    with pytest.raises(Boom), torch.no_grad(), patch_rows(lm, [suppress_patches([(0, 1)])] * BATCH):
        _explode(lm, ids)
    with pytest.raises(NeuronIndexError), patch_rows(lm, [[], [NeuronPatch(lm.n_layers, 0)]]):
        pass
    assert _hook_count(lm) == 0
    assert torch.equal(_logits(lm, ids), before)


# ------------------------------------------------------------------------------------- exception safety


class Boom(RuntimeError):
    pass


def _explode(lm, ids):
    lm.model(input_ids=ids)
    raise Boom("inside the with block")


def test_model_restored_after_exception_in_patch(lm):
    ids = _ids(lm)
    before = _logits(lm, ids)
    with pytest.raises(Boom), torch.no_grad(), patch(lm, [NeuronPatch(i, 1, "set", 9.0) for i in range(lm.n_layers)]):
        _explode(lm, ids)
    assert _hook_count(lm) == 0
    assert all(len(lm.ffn_out(layer)._forward_pre_hooks) == 0 for layer in range(lm.n_layers))
    assert torch.equal(_logits(lm, ids), before)


def test_model_restored_after_exception_in_capture(lm):
    ids = _ids(lm)
    before = _logits(lm, ids)
    with pytest.raises(Boom), torch.no_grad(), capture(lm, positions=-1):
        _explode(lm, ids)
    assert _hook_count(lm) == 0
    assert torch.equal(_logits(lm, ids), before)


def test_model_restored_after_exception_in_nested_contexts(lm):
    ids = _ids(lm)
    before = _logits(lm, ids)
    with pytest.raises(Boom), torch.no_grad(), capture(lm), patch(lm, suppress_patches([(0, 0)])), \
            on_ffn_input(lm, 1, lambda x: x * 2):
        _explode(lm, ids)
    assert _hook_count(lm) == 0
    assert torch.equal(_logits(lm, ids), before)


def test_model_restored_after_error_raised_inside_a_hook(lm):
    """A per-row position tensor of the wrong length fails during the forward pass; nothing is left."""
    ids = _ids(lm)
    before = _logits(lm, ids)
    bad = torch.tensor([1, 2, 3])  # batch has 2 rows
    with pytest.raises(InputError, match="per-row"), torch.no_grad(), patch(lm, suppress_patches([(0, 0)]), bad):
        lm.model(input_ids=ids)
    with pytest.raises(InputError, match="per-row"), torch.no_grad(), capture(lm, positions=bad):
        lm.model(input_ids=ids)
    assert _hook_count(lm) == 0
    assert torch.equal(_logits(lm, ids), before)


# ------------------------------------------------------------------------------------------- bad indices


def test_out_of_range_indices(lm):
    L, N = lm.n_layers, lm.n_neurons
    for layer, neuron in [(L, 0), (-1, 0), (0, N), (0, -1), (L + 5, N + 5)]:
        with pytest.raises(NeuronIndexError), patch(lm, [NeuronPatch(layer, neuron)]):
            pass
    for layers in ([L], [-1], [0, L]):
        with pytest.raises(NeuronIndexError), capture(lm, layers=layers):
            pass
    with pytest.raises(NeuronIndexError, match=f"0..{L - 1}"):
        lm.check_layer(L)
    with pytest.raises(NeuronIndexError, match=f"0..{N - 1}"):
        lm.check_neuron(0, N)
    # a valid patch listed before the bad one must not stay registered
    with pytest.raises(NeuronIndexError), patch(lm, [NeuronPatch(0, 0), NeuronPatch(0, N)]):
        pass
    assert _hook_count(lm) == 0


def test_unknown_patch_op(lm):
    with pytest.raises(InputError, match="Unknown patch op"), patch(lm, [NeuronPatch(0, 0, "double", 2.0)]):
        pass
    assert _hook_count(lm) == 0


def test_neuron_patch_prints_as_layer_neuron():
    assert str(NeuronPatch(17, 1234, "set", 0.0)) == "L17.N1234 set 0"
    assert suppress_patches([(1, 2)]) == [NeuronPatch(1, 2, "set", 0.0)]
    assert scale_patches([(1, 2)], 2.0) == [NeuronPatch(1, 2, "scale", 2.0)]


def test_neuron_patch_names_its_index_as_neuron_does_and_keeps_the_old_name_deprecated():
    """One field name for a neuron's index everywhere: ``index`` (as Neuron.index); ``neuron`` still works, warning."""
    from kneuron.attribution import Neuron

    p = NeuronPatch(3, 7, "scale", 2.0)
    assert p.index == 7 == Neuron(3, 7).index and p == NeuronPatch(layer=3, index=7, op="scale", value=2.0)
    with pytest.warns(FutureWarning, match=r"NeuronPatch\.neuron is deprecated: use NeuronPatch\.index"):
        assert p.neuron == 7
    with pytest.warns(FutureWarning, match=r"NeuronPatch\(neuron=\.\.\.\) is deprecated"):
        old = NeuronPatch(3, neuron=7, op="scale", value=2.0)
    assert old == p and hash(old) == hash(p)
    with pytest.raises(AttributeError):
        p.index = 8  # frozen, as before
    with pytest.raises(AttributeError):
        p.neuron = 8  # read-only
    with pytest.raises(InputError, match="index once"):
        NeuronPatch(3, 7, neuron=7)


# ------------------------------------------------------------------------------------------ odd positions


def test_integer_like_positions(lm):
    """0-d tensors, numpy integers and tuples of them work where ints and lists do."""
    import numpy as np

    ids = _ids(lm)
    full = _clean_acts(lm, ids)
    for positions, index in [(torch.tensor(3), [3]), (np.int64(-1), [-1]), ((np.int32(1), torch.tensor(4)), [1, 4])]:
        with torch.no_grad(), capture(lm, layers=[0], positions=positions) as acts:
            lm.model(input_ids=ids)
        assert torch.equal(acts[0], full[0][:, index])
    with torch.no_grad(), patch(lm, [NeuronPatch(0, 2, "set", 7.0)], positions=torch.tensor(3)), \
            capture(lm, layers=[0]) as acts:
        lm.model(input_ids=ids)
    assert torch.equal(acts[0][:, 3, 2], torch.full((BATCH,), 7.0, dtype=acts[0].dtype))


@pytest.mark.parametrize("positions", [SEQ, -SEQ - 1, [0, SEQ + 3], torch.tensor([0, SEQ])])
def test_position_out_of_range(lm, positions):
    ids = _ids(lm)
    before = _logits(lm, ids)
    with pytest.raises(InputError, match="out of range for a sequence of 7 tokens"), torch.no_grad(), \
            capture(lm, positions=positions):
        lm.model(input_ids=ids)
    with pytest.raises(InputError, match="out of range for a sequence of 7 tokens"), torch.no_grad(), \
            patch(lm, suppress_patches([(0, 0)]), positions=positions):
        lm.model(input_ids=ids)
    assert _hook_count(lm) == 0
    assert torch.equal(_logits(lm, ids), before)


@pytest.mark.parametrize("positions", [torch.tensor([[1, 2]]), torch.tensor([0.5, 1.0]), "3", 2.5])
def test_malformed_positions(lm, positions):
    with pytest.raises(InputError, match="[Pp]osition"), capture(lm, positions=positions):
        pass
    with pytest.raises(InputError, match="[Pp]osition"), patch(lm, suppress_patches([(0, 0)]), positions=positions):
        pass
    assert _hook_count(lm) == 0


@pytest.mark.parametrize("pre", [False, True])
def test_forward_hook_replaces_within_the_block_and_is_removed_also_after_an_exception(pre):
    module = torch.nn.Linear(3, 3).double()
    x = torch.arange(3, dtype=torch.float64)[None]
    clean = module(x)
    hook = (lambda _m, args: (args[0] * 2,)) if pre else (lambda _m, _args, out: out * 2)
    with forward_hook(module, hook, pre=pre):
        hooked = module(x)
    assert torch.equal(hooked, module(x * 2) if pre else clean * 2)
    with pytest.raises(RuntimeError), forward_hook(module, hook, pre=pre):
        raise RuntimeError("inside the block")
    assert not module._forward_hooks and not module._forward_pre_hooks
    assert torch.equal(module(x), clean)
