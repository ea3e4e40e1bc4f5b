"""Edits of a model with shared layers (ALBERT: one layer's weights run at every depth). Neurons (d1, i) and
(d2, i) are one value slot: an update or erase writes it once (never its change twice), and the change reaches
neuron i at every depth. Expected weights are computed by hand from the raw weight tensor."""

from __future__ import annotations

import pytest
import torch
from transformers import AlbertForMaskedLM

from kneuron.facts import Fact, encode
from kneuron.interventions import Edit, EditError, erase_relation, update_fact
from kneuron.interventions.edits import SlotGroup
from kneuron.models import NeuronPatch, capture, from_model, patch
from tiny_models import tiny_config, tiny_lm, tiny_tokenizer

CAPITAL = ("The capital of [X] is [Y].", "[X]'s capital city is [Y].")


def albert(embedding: int = 16, dtype: torch.dtype = torch.float64):
    """The tiny ALBERT (one layer, 3 depths) with embeddings as wide as its hidden states, so answers have an
    output embedding in the residual stream (the default tiny ALBERT's 8 are narrower, and update refuses it)."""
    config = tiny_config("albert")
    config.embedding_size = embedding
    torch.manual_seed(0)
    model = AlbertForMaskedLM(config).to(dtype).eval()
    return from_model(model, tiny_tokenizer("mlm"), name=f"tiny-albert-e{embedding}")


def weight(lm) -> torch.Tensor:
    return lm.model.albert.encoder.albert_layer_groups[0].albert_layers[0].ffn_output.weight.detach()


def token(lm, word: str) -> int:
    return int(lm.tokenizer.convert_tokens_to_ids(word))


def state(lm) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


def same_state(lm, before) -> bool:
    now = lm.model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], before[k]) for k in before)


def test_update_moves_a_shared_slot_once():
    lm = albert()
    before, original = state(lm), weight(lm).clone()
    unembed = lm.model.get_output_embeddings().weight.detach()
    delta = -unembed[token(lm, "Paris")] + 8.0 * unembed[token(lm, "Rome")]
    edit = update_fact(lm, [(2, 5), (0, 5), (1, 7)], "Paris", "Rome")
    assert edit.neurons == [(0, 5), (1, 7)] and len(edit) == 2
    assert edit.meta["merged"] == [[0, 5, [0, 2]]]
    assert edit.meta["shared_depths"] == {"0": [0, 1, 2], "1": [0, 1, 2]}
    with edit.applied(lm):
        expected = original.clone()
        expected[:, 5] += delta  # once, not twice
        expected[:, 7] += delta
        assert torch.equal(weight(lm), expected)
        # the one slot is every depth's: neuron 5 writes the new vector at depth 1 too
        assert torch.equal(lm.value_slot(1, 5), expected[:, 5])
    assert same_state(lm, before)
    text = edit.describe()
    assert "serve depths 0, 1, 2" in text and "L0.N5 is also L2.N5: one slot, written once" in text


def test_the_edit_changes_the_neuron_at_every_depth():
    """Zeroing slot 5 through neuron (2, 5) silences neuron 5's writing at depth 0 as well: the model's output
    equals that of patching neuron 5's value out at every depth, not at depth 2 only."""
    lm = albert()
    ids = lm.tokenizer("The capital of France is [MASK] .", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        everywhere = [NeuronPatch(d, 5, "set", 0.0) for d in range(3)]
        with patch(lm, everywhere):
            silenced = lm.model(input_ids=ids).logits
        with patch(lm, [NeuronPatch(2, 5, "set", 0.0)]):
            only_two = lm.model(input_ids=ids).logits
        with erase_relation(lm, {(2, 5): 1}, top=1).applied(lm):
            erased = lm.model(input_ids=ids).logits
    torch.testing.assert_close(erased, silenced, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(erased, only_two, atol=1e-6)


def test_activation_sign_of_a_shared_slot_is_that_of_its_summed_activations():
    lm = albert()
    fact_prompts = Fact("France", "capital", "Paris", CAPITAL).prompts()
    totals = torch.zeros(3, lm.n_neurons, dtype=torch.float64)
    for prompt in fact_prompts:
        query = encode(lm, prompt, "Paris")
        with torch.no_grad(), capture(lm, positions=query.position) as acts:
            lm.model(input_ids=query.input_ids[None])
        totals += torch.stack([acts[d][0, 0] for d in range(3)])
    # a neuron whose depths 0 and 2 disagree in sign: the slot follows their sum
    index = next(i for i in range(lm.n_neurons) if totals[0, i] * totals[2, i] < 0)
    expected_sign = 1.0 if totals[0, index] + totals[2, index] >= 0 else -1.0
    edit = update_fact(lm, [(0, index), (2, index)], "Paris", "Rome", sign="activation", prompts=fact_prompts)
    unembed = lm.model.get_output_embeddings().weight.detach()
    delta = -unembed[token(lm, "Paris")] + 8.0 * unembed[token(lm, "Rome")]
    assert edit.neurons == [(0, index)]
    assert torch.equal(edit.values()[0, index], expected_sign * delta)
    assert edit.meta["signs"] == [[0, index, expected_sign]]


def test_a_left_out_neuron_leaves_its_slot_at_every_depth_alone():
    lm = albert()
    edit = update_fact(lm, [(0, 5), (1, 7)], "Paris", "Rome", exclude=[(2, 5)])
    assert edit.neurons == [(1, 7)] and edit.meta["left_out"] == [[0, 5]]
    with pytest.raises(EditError, match="no neurons to edit"):
        update_fact(lm, [(0, 5), (1, 5)], "Paris", "Rome", exclude=[(2, 5)])


def test_different_vectors_for_one_slot_are_refused():
    lm = albert()
    with pytest.raises(EditError, match="L0.N5 and L2.N5 are one value slot"):
        Edit.build(lm, "add", {(0, 5): torch.ones(16), (2, 5): torch.zeros(16)})
    edit = Edit.build(lm, "add", {(0, 5): torch.ones(16), (2, 5): torch.ones(16)})
    assert edit.neurons == [(0, 5)] and edit.meta["merged"] == [[0, 5, [0, 2]]]
    # an edit put together by hand (or altered on disk) that names one column in two groups
    group = edit.groups[0]
    twice = SlotGroup(2, group.module, group.layout, (5,), group.values)
    with pytest.raises(EditError, match="one value slot"):
        Edit("add", (group, twice), edit.model)


def test_erase_counts_slots_and_writes_each_once():
    lm = tiny_lm("albert")  # embeddings narrower than the hidden states: mode zero only
    original = weight(lm).clone()
    counts = {(0, 5): 3, (2, 5): 3, (1, 7): 2, (0, 9): 1}
    edit = erase_relation(lm, counts, top=2)
    assert edit.neurons == [(0, 5), (1, 7)]
    assert edit.meta["counts"] == [[0, 5, 3], [1, 7, 2]] and edit.meta["merged"] == [[0, 5, [0, 2]]]
    with edit.applied(lm):
        expected = original.clone()
        expected[:, [5, 7]] = 0.0
        assert torch.equal(weight(lm), expected)
    assert torch.equal(weight(lm), original)
    with pytest.raises(EditError, match="factorised embeddings"):
        erase_relation(lm, counts, mode="unknown")


def test_saved_edit_keeps_the_shared_notes(tmp_path):
    lm = albert()
    edit = update_fact(lm, [(0, 5), (2, 5)], "Paris", "Rome")
    loaded = Edit.load(edit.save(tmp_path / "e"))
    assert loaded.meta["merged"] == [[0, 5, [0, 2]]] and loaded.describe() == edit.describe()
    before = state(lm)
    with loaded.applied(lm):
        assert not same_state(lm, before)
    assert same_state(lm, before)
