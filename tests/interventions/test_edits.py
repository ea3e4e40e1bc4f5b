"""Edits as data on tiny random models of both value-slot layouts: nn.Linear (llama, bert) and GPT-2's Conv1D.

The expected weights are computed by hand from the unembedding matrix and the raw weight tensors (not through
kneuron's slot readers), and compared bit-for-bit with torch.equal.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from kneuron.attribution import KnowledgeNeurons, Neuron
from kneuron.errors import EditOptionError, InputError, KneuronError
from kneuron.facts import Fact
from kneuron.interventions import Edit, EditError, erase_relation, shared_neurons, update_fact
from tiny_models import FAMILIES, tiny_lm

LAYOUTS = ("llama", "bert", "gpt2")  # linear (gated), linear (masked), conv1d
NEURONS = [(0, 3), (1, 5), (1, 7)]
CAPITAL = ("The capital of [X] is [Y].", "[X]'s capital city is [Y].")


def state(lm) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def same_state(lm, before: dict[str, torch.Tensor]) -> bool:
    """Every parameter and buffer bit for bit (not by value: -0.0 differs from 0.0, a NaN equals itself)."""
    now = lm.model.state_dict()
    return now.keys() == before.keys() and all(same_bits(now[k], before[k]) for k in before)


def attention(lm) -> str:
    """The attention kernel ``lm`` runs ("sdpa" for most tiny models): a reloaded copy must run the same one to give
    bit-identical logits (eager and SDPA attention round float32 differently)."""
    return lm.model.config._attn_implementation


def token(lm, word: str) -> int:
    return int(lm.tokenizer.convert_tokens_to_ids(word))


def slot_by_hand(lm, layer: int, index: int) -> torch.Tensor:
    weight = lm.ffn_out(layer).weight.detach()
    return weight[:, index] if lm.spec.layout == "linear" else weight[index, :]


def logits(lm, text: str = "The capital of France is Paris .") -> torch.Tensor:
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


@pytest.fixture(params=LAYOUTS)
def layout_family(request) -> str:
    return request.param


def test_layouts_cover_both_weight_layouts():
    assert {tiny_lm(f).spec.layout for f in LAYOUTS} == {"linear", "conv1d"}


def test_update_delta_is_exactly_the_formula(layout_family):
    lm = tiny_lm(layout_family, dtype=torch.float64)
    before = state(lm)
    unembed = lm.model.get_output_embeddings().weight.detach().clone()
    delta = -1.0 * unembed[token(lm, "Paris")] + 8.0 * unembed[token(lm, "Rome")]
    slots_before = {k: slot_by_hand(lm, *k).clone() for k in NEURONS}
    edit = update_fact(lm, NEURONS, "Paris", "Rome")
    assert same_state(lm, before)  # making an edit changes nothing
    handle = edit.apply(lm)
    for key in NEURONS:
        assert torch.equal(slot_by_hand(lm, *key), slots_before[key] + delta)
        assert torch.equal(lm.value_slot(*key), slots_before[key] + delta)
    # nothing else moved: the other slots of the touched layers and every other tensor
    changed = {name for name in before if not torch.equal(lm.model.state_dict()[name], before[name])}
    paths = {f"{g.module}.weight" for g in edit.groups}
    assert changed == paths
    for group in edit.groups:
        layer = group.layer
        diff = lm.ffn_out(layer).weight.detach() != before[f"{group.module}.weight"]
        touched = diff.any(dim=0) if lm.spec.layout == "linear" else diff.any(dim=1)
        assert sorted(touched.nonzero().flatten().tolist()) == [i for l_, i in NEURONS if l_ == layer]
    handle.undo()
    assert same_state(lm, before)


def test_update_float32_delta_and_custom_lambdas(layout_family):
    lm = tiny_lm(layout_family)
    unembed = lm.model.get_output_embeddings().weight.detach().clone()
    slot = slot_by_hand(lm, 1, 5).clone()
    edit = update_fact(lm, [Neuron(1, 5, 0.3)], "Berlin", "Madrid", lambda_old=0.5, lambda_new=3.0)
    with edit.applied(lm):
        expected = slot + (-0.5 * unembed[token(lm, "Berlin")] + 3.0 * unembed[token(lm, "Madrid")])
        assert torch.equal(slot_by_hand(lm, 1, 5), expected)
    assert torch.equal(slot_by_hand(lm, 1, 5), slot)


@pytest.mark.parametrize("family", FAMILIES)
def test_undo_is_bit_exact_on_every_family(family):
    lm = tiny_lm(family, neurons=32)
    before = state(lm)
    if lm.model.get_output_embeddings().weight.shape[1] != lm.value_slot(0, 0).shape[0]:
        # ALBERT's factorised embeddings (8 entries in the tiny model) are not in the 16-entry residual stream
        for make in (lambda: update_fact(lm, NEURONS, "Paris", "Tokyo"),
                     lambda: erase_relation(lm, {(1, 0): 3}, mode="unknown")):
            with pytest.raises(EditError, match="factorised embeddings"):
                make()
        mode = "zero"
    else:
        edit = update_fact(lm, NEURONS + [(0, 31)], "Paris", "Tokyo", lambda_new=1e4)
        handle = edit.apply(lm)
        assert not same_state(lm, before)
        handle.undo()
        assert same_state(lm, before)
        mode = "unknown"
    erase = erase_relation(lm, {(1, 0): 3, (0, 31): 2, (1, 30): 1}, mode=mode)
    with erase.applied(lm):
        assert not same_state(lm, before)
    assert same_state(lm, before)


def test_undo_bfloat16_is_bit_exact():
    lm = tiny_lm("llama", dtype=torch.bfloat16)
    before = state(lm)
    with update_fact(lm, NEURONS, "Paris", "Rome").applied(lm):
        assert not same_state(lm, before)
    assert same_state(lm, before)


def test_exception_inside_context_leaves_weights_untouched(layout_family):
    lm = tiny_lm(layout_family)
    before, clean = state(lm), logits(lm)
    edit = update_fact(lm, NEURONS, "Paris", "Rome")
    with pytest.raises(RuntimeError, match="boom"), edit.applied(lm):
        assert not torch.equal(logits(lm), clean)
        raise RuntimeError("boom")
    assert same_state(lm, before)
    assert torch.equal(logits(lm), clean)


def test_failed_apply_restores_what_it_wrote():
    lm = tiny_lm("llama")
    before = state(lm)
    good = update_fact(lm, [(0, 1)], "Paris", "Rome")
    bad_group = type(good.groups[0])(1, "model.layers.1.mlp.down_proj", "linear", (40,), good.groups[0].values)
    bad = Edit("add", (good.groups[0], bad_group), good.model)
    with pytest.raises(KneuronError, match="out of range"):
        bad.apply(lm)
    assert same_state(lm, before)


def test_apply_returns_handle_usable_as_context():
    lm = tiny_lm("gpt2")
    before = state(lm)
    with update_fact(lm, NEURONS, "Paris", "Rome").apply(lm) as edited:
        assert edited is lm and not same_state(lm, before)
    assert same_state(lm, before)


def test_stacked_edits_undo_in_reverse_order():
    lm = tiny_lm("llama")
    before = state(lm)
    first = update_fact(lm, NEURONS, "Paris", "Rome").apply(lm)
    middle = state(lm)
    second = erase_relation(lm, {(1, 5): 2}).apply(lm)
    with pytest.raises(EditError, match="applied after"):
        first.undo()
    second.undo()
    assert same_state(lm, middle)
    first.undo()
    assert same_state(lm, before)
    with pytest.raises(EditError, match="already undone"):
        first.undo()


def test_saved_and_loaded_edit_gives_same_outputs(layout_family, tmp_path):
    lm = tiny_lm(layout_family)
    edit = update_fact(lm, NEURONS, "Paris", "Rome")
    with edit.applied(lm):
        edited = logits(lm)
    file = edit.save(tmp_path / "edit")
    assert file.name == "edit.safetensors" and (tmp_path / "edit" / "edit.json").is_file()
    fresh = tiny_lm(layout_family)  # same seed: the same model, never edited
    for source in (tmp_path / "edit", file):
        loaded = Edit.load(source)
        assert str(loaded) == str(edit) and loaded.op == edit.op and loaded.meta == edit.meta
        for a, b in zip(loaded.groups, edit.groups, strict=True):
            assert (a.layer, a.module, a.layout, a.indices) == (b.layer, b.module, b.layout, b.indices)
            assert torch.equal(a.values, b.values) and a.values.dtype == b.values.dtype
        with loaded.applied(fresh):
            assert torch.equal(logits(fresh), edited)
    single = edit.save(tmp_path / "one.safetensors")
    assert single.is_file() and (tmp_path / "one.json").is_file()
    assert torch.equal(Edit.load(single).groups[0].values, edit.groups[0].values)


def test_erase_save_load_round_trip(tmp_path):
    lm = tiny_lm("gpt2")
    edit = erase_relation(lm, {(0, 1): 4, (1, 2): 3}, relation="capital", mode="unknown")
    with edit.applied(lm):
        edited = logits(lm)
    with Edit.load(edit.save(tmp_path / "erase")).applied(lm):
        assert torch.equal(logits(lm), edited)


def test_load_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(EditError, match="No saved edit"):
        Edit.load(tmp_path / "missing")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(EditError, match="not a kneuron edit"):
        Edit.load(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(KneuronError):
        Edit.load(tmp_path / "junk.safetensors")


def test_save_model_writes_the_edited_model(tmp_path):
    lm = tiny_lm("llama")
    before = state(lm)
    edit = update_fact(lm, NEURONS, "Paris", "Rome")
    with edit.applied(lm):
        edited = logits(lm)
    out = edit.save_pretrained(lm, tmp_path / "model")
    assert same_state(lm, before)  # lm itself is left unedited
    # the same attention kernel as lm (SDPA): the eager kernel differs from SDPA by float32 rounding (3e-6 here)
    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation=attention(lm)).eval()
    with torch.no_grad():
        ids = lm.tokenizer("The capital of France is Paris .", return_tensors="pt")["input_ids"]
        assert torch.equal(reloaded(input_ids=ids).logits, edited)  # the saved weights are the edited ones
    assert str(Edit.load(out / "kneuron_edit")) == str(edit)


def test_save_model_bert(tmp_path):
    lm = tiny_lm("bert")
    edit = erase_relation(lm, {(1, 3): 2})
    with edit.applied(lm):
        edited = logits(lm, "The capital of France is [MASK] .")
    out = edit.save_model(lm, tmp_path / "bert")
    reloaded = AutoModelForMaskedLM.from_pretrained(out, attn_implementation=attention(lm)).eval()
    ids = lm.tokenizer("The capital of France is [MASK] .", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, edited)


# ------------------------------------------------------------------------------------------------ refusals

def test_refuses_an_edit_made_for_another_model():
    llama = tiny_lm("llama")
    edit = update_fact(llama, NEURONS, "Paris", "Rome")
    for other in (tiny_lm("gpt2"), tiny_lm("llama", neurons=48), tiny_lm("llama", layers=3)):
        before = state(other)
        with pytest.raises(KneuronError, match="made for"):
            edit.apply(other)
        with pytest.raises(KneuronError, match="made for"), edit.applied(other):
            pass  # pragma: no cover
        assert same_state(other, before)
    renamed = tiny_lm("llama")
    renamed.name = "someone-else"
    with pytest.raises(EditError, match="tiny-llama"):
        edit.apply(renamed)


def test_no_neurons_to_edit_is_an_error():
    lm = tiny_lm("llama")
    with pytest.raises(KneuronError, match="no neurons"):
        update_fact(lm, [], "Paris", "Rome")
    with pytest.raises(KneuronError, match="no neurons"):
        update_fact(lm, KnowledgeNeurons([], []), "Paris", "Rome")
    with pytest.raises(KneuronError, match="no neurons"):
        update_fact(lm, NEURONS, "Paris", "Rome", exclude=NEURONS)
    with pytest.raises(KneuronError, match="no neurons"):
        erase_relation(lm, {})
    with pytest.raises(KneuronError, match="no neurons"):
        Edit.build(lm, "add", {})


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_answer_not_in_vocabulary_is_an_error(family):
    lm = tiny_lm(family)
    with pytest.raises(KneuronError, match="vocabulary"):
        update_fact(lm, NEURONS, "Paris", "Xylophone")
    with pytest.raises(KneuronError, match="vocabulary"):
        update_fact(lm, NEURONS, "Xylophone", "Paris")


def test_other_bad_input():
    lm = tiny_lm("llama")
    with pytest.raises(KneuronError, match="same tokens"):
        update_fact(lm, NEURONS, "Paris", "Paris")
    with pytest.raises(KneuronError, match="same token"):
        update_fact(lm, NEURONS, "Copenhagen", "Copen")
    with pytest.raises(KneuronError, match="out of range"):
        update_fact(lm, [(5, 0)], "Paris", "Rome")
    with pytest.raises(KneuronError, match="out of range"):
        update_fact(lm, [(0, 32)], "Paris", "Rome")
    with pytest.raises(KneuronError, match="not a neuron"):
        update_fact(lm, ["L0.N3"], "Paris", "Rome")
    with pytest.raises(KneuronError, match="n_facts"):
        update_fact(lm, NEURONS, "Paris", "Rome", relation_counts={(0, 3): 5})
    with pytest.raises(KneuronError, match="tokens must be"):
        update_fact(lm, NEURONS, "Paris", "Rome", tokens="last")
    with pytest.raises(KneuronError, match="old answer"):
        update_fact(lm, NEURONS, None, "Rome")
    with pytest.raises(EditOptionError, match="top must be"):
        erase_relation(lm, {(0, 1): 1}, top=0)
    with pytest.raises(EditOptionError, match="mode must be"):
        erase_relation(lm, {(0, 1): 1}, mode="random")


def test_unknown_mode_needs_an_unknown_token():
    lm = tiny_lm("llama")
    lm.tokenizer.unk_token = None
    with pytest.raises(KneuronError, match="no unknown token"):
        erase_relation(lm, {(0, 1): 1}, mode="unknown")
    erase_relation(lm, {(0, 1): 1}, mode="zero")  # zero mode needs none


# ------------------------------------------------------------------------------------ multi-token, exclusion

def test_multi_token_answers_first_or_mean(layout_family):
    lm = tiny_lm(layout_family, dtype=torch.float64)
    unembed = lm.model.get_output_embeddings().weight.detach()
    copen, hagen, paris = token(lm, "Copen"), token(lm, "##hagen"), token(lm, "Paris")
    first = update_fact(lm, [(1, 2)], "Paris", "Copenhagen")
    assert first.meta["new_ids"] == [copen, hagen]
    assert torch.equal(first.groups[0].values[0], -1.0 * unembed[paris] + 8.0 * unembed[copen])
    mean = update_fact(lm, [(1, 2)], "Paris", "Copenhagen", tokens="mean")
    assert torch.equal(mean.groups[0].values[0], -1.0 * unembed[paris] + 8.0 * unembed[[copen, hagen]].mean(0))
    # same first token: only "mean" can tell them apart
    assert update_fact(lm, [(1, 2)], "Copenhagen", "Copen", tokens="mean").groups


def test_shared_neurons_are_left_out():
    counts = {(0, 3): 6, (1, 5): 2, (1, 7): 1, (1, 9): 3}
    assert shared_neurons(counts, 20) == {(0, 3), (1, 9)}           # > 10% of 20 facts: 3 or more
    assert shared_neurons(counts, 5) == {(0, 3), (1, 5), (1, 9)}    # a single fact's neuron is never shared
    assert shared_neurons(counts, 20, max_share=0.25) == {(0, 3)}
    lm = tiny_lm("llama")
    edit = update_fact(lm, [(0, 3), (1, 5), (1, 7), (1, 9)], "Paris", "Rome", relation_counts=counts, n_facts=20)
    assert edit.neurons == [(1, 5), (1, 7)]
    assert edit.meta["left_out"] == [[0, 3], [1, 9]]
    edit = update_fact(lm, [(0, 3), (1, 5)], "Paris", "Rome", exclude=[Neuron(1, 5)])
    assert edit.neurons == [(0, 3)]
    with pytest.raises(KneuronError):
        shared_neurons(counts, 0)


def test_fact_gives_label_prompt_and_old_answer():
    lm = tiny_lm("llama")
    fact = Fact("France", "capital", "Paris", CAPITAL)
    kn = KnowledgeNeurons([Neuron(1, 7, 1.0), Neuron(0, 3, 0.5)], [], fact=fact)
    edit = update_fact(lm, kn, None, "Rome")
    assert str(edit) == "Edit(update France capital: Paris -> Rome; 2 slots in L0,L1)"
    assert repr(edit) == str(edit)
    assert edit.meta["fact_id"] == "capital:France" and edit.meta["old"] == "Paris"
    assert "L1 model.layers.1.mlp.down_proj (linear)" in edit.describe()
    assert len(edit) == 2 and edit.layers == [0, 1]


# ------------------------------------------------------------------------------------------------- erase

def test_erase_sets_slots_to_zero_or_unknown(layout_family):
    lm = tiny_lm(layout_family)
    counts = {(1, 4): 5, (0, 2): 5, (1, 1): 3, (0, 9): 1}
    unk = lm.tokenizer.unk_token_id
    unk_row = lm.model.get_output_embeddings().weight.detach()[unk].clone()
    zero = erase_relation(lm, counts, top=3, relation="capital")
    assert zero.neurons == [(0, 2), (1, 1), (1, 4)] and zero.meta["counts"][0] == [0, 2, 5]
    assert str(zero) == "Edit(erase capital (zero); 3 slots in L0,L1)"
    with zero.applied(lm):
        for key in zero.neurons:
            assert torch.equal(slot_by_hand(lm, *key), torch.zeros_like(unk_row))
        assert slot_by_hand(lm, 0, 9).abs().sum() > 0
    with erase_relation(lm, counts, top=2, mode="unknown").applied(lm):
        for key in [(0, 2), (1, 4)]:
            assert torch.equal(slot_by_hand(lm, *key), unk_row)


def test_erase_counts_neuron_lists():
    lm = tiny_lm("llama")
    lists = [[Neuron(0, 1), Neuron(1, 2)], KnowledgeNeurons([Neuron(1, 2)], []), [(1, 2), (0, 5)]]
    edit = erase_relation(lm, lists, top=1)
    assert edit.neurons == [(1, 2)] and edit.meta["counts"] == [[1, 2, 3]]
    assert len(erase_relation(lm, lists, top=50)) == 3


def test_slot_norm_scale_is_the_official_codes_formula(layout_family):
    lm = tiny_lm(layout_family, dtype=torch.float64)
    unembed = lm.model.get_output_embeddings().weight.detach()
    e_old, e_new = unembed[token(lm, "Paris")], unembed[token(lm, "Rome")]
    edit = update_fact(lm, NEURONS, "Paris", "Rome", scale="slot_norm")
    assert edit.meta["scale"] == "slot_norm"
    for key, delta in edit.values().items():
        norm = slot_by_hand(lm, *key).norm()
        expected = -(1.0 * norm / e_old.norm()) * e_old + (8.0 * norm / e_new.norm()) * e_new
        assert torch.equal(delta, expected)
    with pytest.raises(EditOptionError, match="scale must be"):
        update_fact(lm, NEURONS, "Paris", "Rome", scale="huge")


def test_activation_sign_flips_deltas_of_negative_neurons(layout_family):
    from kneuron.facts import encode
    from kneuron.models import capture

    lm = tiny_lm(layout_family, dtype=torch.float64)
    fact = Fact("France", "capital", "Paris", CAPITAL)
    keys = [(0, i) for i in range(12)] + [(1, i) for i in range(12)]
    plain = update_fact(lm, keys, "Paris", "Rome", fact=fact)
    signed = update_fact(lm, keys, "Paris", "Rome", fact=fact, sign="activation")
    totals = dict.fromkeys(keys, 0.0)
    for prompt in fact.prompts():  # the mean activation at the answer position, by hand
        query = encode(lm, prompt, "Paris")
        with torch.no_grad(), capture(lm, [0, 1]) as acts:
            lm.model(input_ids=query.input_ids[None])
        for layer, index in keys:
            totals[layer, index] += float(acts[layer][0, query.position, index])
    signs = {k: -1.0 if t < 0 else 1.0 for k, t in totals.items()}
    assert {-1.0, 1.0} == set(signs.values())  # both signs occur
    for key, delta in signed.values().items():
        assert torch.equal(delta, plain.values()[key] * signs[key])
    assert signed.meta["sign"] == "activation" and len(signed.meta["signs"]) == len(keys)
    with pytest.raises(KneuronError, match="prompts"):
        update_fact(lm, keys, "Paris", "Rome", sign="activation")
    with pytest.raises(EditOptionError, match="sign must be"):
        update_fact(lm, keys, "Paris", "Rome", fact=fact, sign="both")


def test_a_bad_edit_option_is_an_input_error_and_an_edit_error():
    lm = tiny_lm("llama")
    with pytest.raises(EditOptionError) as caught:
        update_fact(lm, NEURONS, "Paris", "Rome", scale="huge")
    assert isinstance(caught.value, InputError) and isinstance(caught.value, EditError)
    assert isinstance(caught.value, ValueError)
