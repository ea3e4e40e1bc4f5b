"""ROME (interventions/rome.py, rome_stats.py) on tiny models in float64, against slow references: the key is the
mean FFN activation at the subject's last token over the prefixed prompts (each run alone, the position found by
re-tokenizing the text up to the subject's end), C is the mean outer product of the sampled text's keys (one
sequence at a time), the new key maps to the optimised value, the update has rank one and moves any other key as
the closed form says, undo is bit-exact (also after an exception), and the edit saves and loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kneuron.errors import EditOptionError, FactError
from kneuron.facts import Fact
from kneuron.interventions import Edit
from kneuron.interventions.rome import (
    RomeSettings,
    add_at,
    context_prefixes,
    rewrite_prompt,
    rome_edit,
    rome_parts,
)
from kneuron.interventions.rome_stats import key_second_moment, sample_sequences
from kneuron.models.hooks import capture
from tiny_models import tiny_lm

FACT = Fact("France", "capital", "Paris", ("[Y] is the capital of [X].", "The capital of [X] is [Y]."))
#: tiny random models barely answer to the subject position: a small step, no weight decay, so the NLL must fall
SETTINGS = RomeSettings(prefixes=3, prefix_tokens=4, steps=5, lr=0.05, weight_decay=0.0)
LAYER = 1


def _slots(lm, layer):
    weight = lm.ffn_out(layer).weight.detach().clone()
    return weight.T if lm.spec.layout == "linear" else weight


def _state(lm):
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def edited(request):
    """A float64 tiny model of a gated and of a Conv1D family, its stats, the ROME parts and edit of FACT."""
    lm = tiny_lm(request.param, dtype=torch.float64, layers=3)
    stats = key_second_moment(lm, LAYER, 150, seed=3)
    parts = rome_parts(lm, FACT, "Rome", layer=LAYER, stats=stats, settings=SETTINGS)
    return lm, stats, parts, rome_edit(lm, FACT, "Rome", parts, SETTINGS)


def test_key_is_the_mean_subject_key_over_prefixes(edited):
    lm, _, parts, _ = edited
    prefixes = context_prefixes(lm, SETTINGS.prefixes, SETTINGS.prefix_tokens, seed=SETTINGS.seed)
    assert parts.info["prefixes"] == prefixes and len(prefixes) == 4 and prefixes[0] == ""
    keys = []
    for prefix in prefixes:
        text = prefix + "The capital of France is"
        ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
        position = len(lm.tokenizer(prefix + "The capital of France")["input_ids"]) - 1  # ROME's way
        with capture(lm, [LAYER]) as acts, torch.no_grad():
            lm.model(input_ids=ids)
        keys.append(acts[LAYER][0, position])
    torch.testing.assert_close(parts.key, torch.stack(keys).mean(0), rtol=1e-10, atol=1e-12)


def test_second_moment_is_the_mean_outer_product(edited):
    lm, stats, _, _ = edited
    keys = []
    for ids in sample_sequences(lm, 3, 63, seed=3):  # 150 keys: 3 sequences of 63 tokens after the start token
        with capture(lm, [LAYER]) as acts, torch.no_grad():
            lm.model(input_ids=ids[None])
        keys.append(acts[LAYER][0, 1:])
    k = torch.cat(keys)[:150].numpy()
    assert stats.samples == 150
    np.testing.assert_allclose(stats.moment.numpy(), sum(np.outer(r, r) for r in k) / 150, rtol=1e-10, atol=1e-13)


def test_update_is_rank_one_maps_the_key_and_moves_others_by_the_closed_form(edited):
    lm, stats, parts, edit = edited
    before = _slots(lm, LAYER)
    with edit.applied(lm):
        after = _slots(lm, LAYER)
    change = after - before
    assert torch.linalg.matrix_rank(change).item() == 1
    assert edit.neurons == [(LAYER, i) for i in range(lm.n_neurons)]
    # the new key maps to the optimised value: W' k* = W k* + δ = v*
    torch.testing.assert_close(parts.key @ after, parts.value, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(parts.value, parts.key @ before + parts.delta, rtol=1e-12, atol=1e-12)
    # any other key k moves by δ (kᵀC⁻¹k*) / (k*ᵀC⁻¹k*), C with the ridge, solved here with numpy
    c = stats.moment.numpy()
    c = c + SETTINGS.ridge * np.trace(c) / len(c) * np.eye(len(c))
    u = np.linalg.solve(c, parts.key.numpy())
    for k in torch.randn(5, lm.n_neurons, generator=torch.Generator().manual_seed(0), dtype=torch.float64):
        expected = parts.delta.numpy() * float(k.numpy() @ u) / float(parts.key.numpy() @ u)
        np.testing.assert_allclose((k @ change).numpy(), expected, rtol=1e-8, atol=1e-11)


def test_optimisation_lowers_the_new_answers_nll(edited):
    _, _, parts, _ = edited
    info = parts.info
    assert info["nll_after"] < info["nll_before"] and info["steps"] <= SETTINGS.steps
    assert parts.delta.norm() <= SETTINGS.clamp * info["target_norm"] * (1 + 1e-9)
    assert info["essence"] == "France is a" and info["stats"] == {"layer": LAYER, "samples": 150,
                                                                  "text": "generated", "seed": 3}


def test_undo_is_bit_exact_also_after_an_exception(edited, tmp_path):
    lm, _, _, edit = edited
    state = _state(lm)
    handle = edit.apply(lm)
    assert not torch.equal(lm.ffn_out(LAYER).weight, state[next(k for k in state if k.endswith(
        f"{LAYER}.mlp.down_proj.weight") or k.endswith(f"h.{LAYER}.mlp.c_proj.weight"))])
    handle.undo()
    assert all(torch.equal(v, state[k]) for k, v in lm.model.state_dict().items())
    with pytest.raises(RuntimeError, match="boom"), edit.applied(lm):
        raise RuntimeError("boom")
    assert all(torch.equal(v, state[k]) for k, v in lm.model.state_dict().items())
    with pytest.raises(RuntimeError, match="boom"), add_at(lm, LAYER, torch.tensor([0]), torch.zeros(16)):
        raise RuntimeError("boom")
    assert not lm.ffn_out(LAYER)._forward_hooks
    loaded = Edit.load(edit.save(tmp_path / "rome"))
    assert loaded.kind == "rome" and loaded.meta["method"] == "rome" and loaded.meta["layer"] == LAYER
    for key, value in edit.values().items():
        assert torch.equal(loaded.values()[key], value)


def test_refusals_are_one_line():
    lm = tiny_lm("llama", layers=2)
    with pytest.raises(EditOptionError, match="same tokens"):
        rome_parts(lm, FACT, "Paris", layer=1, settings=SETTINGS)
    with pytest.raises(FactError, match="before the answer"):
        rewrite_prompt(Fact("France", "capital", "Paris", ("[Y] is the capital of [X].",)))
    with pytest.raises(EditOptionError, match="last: its FFN output"):
        rome_parts(lm, FACT, "Rome", layer=1, settings=SETTINGS)
    with pytest.raises(EditOptionError, match="masked model"):
        rome_parts(tiny_lm("bert"), FACT, "Rome", layer=0, settings=SETTINGS)
    with pytest.raises(EditOptionError, match="non-negative"):
        RomeSettings(lr=-1.0)
