"""`kneuron edit` and `kneuron erase` on an atlas made from a tiny model."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from kneuron import cli
from kneuron.interventions import Edit
from kneuron.store import Atlas, run
from studies.conftest import tiny_facts
from tiny_models import tiny_lm

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli.app, list(args), env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def atlas_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("atlas") / "tiny.sqlite"
    run(tiny_lm("llama"), tiny_facts()[:5], path, steps=2, known_only=False, progress=False, share=0.3)
    return path


def test_edit_prints_before_after_and_saves(atlas_path, fake_load, tmp_path):
    result = invoke("edit", "--run", str(atlas_path), "--fact", "capital:France", "--new", "Rome",
                    "--save", str(tmp_path / "edit"), "--save-model", str(tmp_path / "model"), "--others", "2",
                    "--sign", "activation")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Edit(update France capital: Paris -> Rome;" in out
    assert "P(Paris)" in out and "P(Rome)" in out and "→" in out
    assert "The capital of France is" in out and "Collateral" in out
    assert "same relation" in out and "other relation" in out
    saved = Edit.load(tmp_path / "edit")
    assert saved.meta["fact_id"] == "capital:France" and saved.meta["new"] == "Rome"
    assert saved.meta["sign"] == "activation"
    with Atlas.open(atlas_path, read_only=True) as atlas:
        kn = atlas.knowledge_neurons("capital:France")
    assert set(saved.neurons) <= set(kn.keys)
    assert (tmp_path / "model" / "config.json").is_file()
    assert (tmp_path / "model" / "kneuron_edit" / "edit.safetensors").is_file()
    # the saved edit, applied to a fresh copy of the model, gives the saved model's outputs
    from transformers import AutoModelForCausalLM

    lm = tiny_lm("llama")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model", attn_implementation="eager").eval()
    ids = lm.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad(), saved.applied(lm):
        assert torch.allclose(lm.model(input_ids=ids).logits, reloaded(input_ids=ids).logits, atol=1e-6)


def test_erase_prints_and_saves(atlas_path, fake_load, tmp_path):
    result = invoke("erase", "--run", str(atlas_path), "--relation", "capital", "--top", "3", "--mode", "unknown",
                    "--save", str(tmp_path / "erase"))
    assert result.exit_code == 0, result.output
    assert "Edit(erase capital (unknown);" in result.stdout and "Erasing capital" in result.stdout
    assert "capital:Germany" in result.stdout
    edit = Edit.load(tmp_path / "erase")
    assert edit.op == "set" and len(edit) <= 3 and edit.meta["mode"] == "unknown"


def test_bad_input(atlas_path, fake_load, tmp_path):
    result = invoke("edit", "--run", str(atlas_path), "--fact", "capital:France", "--new", "Rome", "--sign", "x")
    assert result.exit_code == 1 and "sign must be" in result.output
    result = invoke("edit", "--run", str(atlas_path), "--fact", "capital:France", "--new", "Xylophone")
    assert result.exit_code == 1 and "vocabulary" in result.output
    result = invoke("edit", "--run", str(atlas_path), "--fact", "capital:Nowhere", "--new", "Rome")
    assert result.exit_code == 1 and "capital:Nowhere" in result.output
    result = invoke("erase", "--run", str(atlas_path), "--relation", "sport")
    assert result.exit_code == 1 and "no relation 'sport'" in result.output
    result = invoke("erase", "--run", str(atlas_path), "--relation", "capital", "--mode", "random")
    assert result.exit_code == 1 and "mode must be" in result.output
    result = invoke("edit", "--run", str(atlas_path), "--fact", "capital:France", "--new", "Rome",
                    "--model", "tiny-gpt2")
    assert result.exit_code == 1 and "another model" in result.output
    result = invoke("edit", "--run", str(tmp_path / "missing.sqlite"), "--fact", "capital:France", "--new", "Rome")
    assert result.exit_code == 1 and "No atlas" in result.output


def test_study_editing_stores_rows_in_the_atlas(atlas_path, fake_load, tmp_path):
    import shutil

    from kneuron.studies.editing import STUDY
    from kneuron.studies.editing_summary import format_summary
    from kneuron.studies.intervals import find, format_interval

    path = tmp_path / "copy.sqlite"
    shutil.copy(atlas_path, path)
    result = invoke("study", "editing", "--run", str(path), "--erase", "capital", "--top", "3", "--other", "2",
                    "--other-erase", "3", "--settings", "absolute:activation")
    assert result.exit_code == 0, result.output
    assert "update scale=absolute sign=activation" in result.stderr
    with Atlas.open(path, read_only=True) as atlas:
        stored = atlas.results(STUDY)
        rows = [r for r in stored if r["variant"] != "params"]
        aggregates = atlas.aggregates(STUDY)
    assert len(rows) > 0 and "kn_signed" in result.stdout
    # the printed summary shows the stored interval, n and p (vs the control its heading names)
    interval = find(aggregates, "kn_signed", "new_beats_old")
    assert interval.n and interval.control == "random_signed"
    shown = format_interval(interval, percent=True, signed=False).removesuffix(" vs random_signed")
    assert shown in result.stdout and "update kn_signed: " in result.stdout
    variants = {r["variant"] for r in stored}
    assert {"kn_signed", "random_signed", "erase_zero", "erase_unknown", "erase_random_zero"} <= variants
    text = format_summary(rows)
    assert "kn_signed" in text and "erase_unknown" in text


def error_line(result) -> str:
    """The one line the CLI prints for an error a user can act on (no traceback)."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    return errors[0]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_lambda_is_one_clear_line(atlas_path, fake_load, tmp_path, value):
    result = invoke("edit", "--run", str(atlas_path), "--fact", "capital:France", "--new", "Rome",
                    "--lambda-new", value, "--save", str(tmp_path / "edit"))
    assert "finite" in error_line(result)
    assert not (tmp_path / "edit").exists()


@pytest.mark.parametrize("command", ["edit", "erase"])
def test_save_targets_are_refused_in_one_line_before_any_work(atlas_path, fake_load, tmp_path, command):
    args = (["edit", "--fact", "capital:France", "--new", "Rome"] if command == "edit"
            else ["erase", "--relation", "capital", "--top", "2"]) + ["--run", str(atlas_path)]
    user = tmp_path / "notes.txt"
    user.write_text("mine")
    assert "is a file" in error_line(invoke(*args, "--save", str(user)))
    assert "is a file" in error_line(invoke(*args, "--save-model", str(user)))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"mine")
    assert "not empty" in error_line(invoke(*args, "--save-model", str(folder)))
    assert user.read_text() == "mine" and [p.name for p in folder.iterdir()] == ["weights.bin"]
    # an earlier saved edit is replaced only with --overwrite
    assert invoke(*args, "--save", str(tmp_path / "edit")).exit_code == 0
    assert "--overwrite" in error_line(invoke(*args, "--save", str(tmp_path / "edit")))
    # a folder kneuron did not write: refused also with --overwrite (issue 27)
    result = invoke(*args, "--save", str(tmp_path / "edit"), "--save-model", str(folder), "--overwrite")
    assert "not written by kneuron" in error_line(result)
    assert [p.name for p in folder.iterdir()] == ["weights.bin"]
    made = tmp_path / "made"
    assert invoke(*args, "--save-model", str(made)).exit_code == 0
    (made / "weights.bin").write_bytes(b"mine")
    result = invoke(*args, "--save", str(tmp_path / "edit"), "--save-model", str(made), "--overwrite")
    assert result.exit_code == 0, result.output
    assert (made / "weights.bin").read_bytes() == b"mine" and (made / "config.json").is_file()


def test_save_model_over_the_models_own_folder_is_refused(atlas_path, fake_load, tmp_path, monkeypatch):
    import kneuron.models

    source = tmp_path / "tiny-llama"
    tiny = tiny_lm("llama")
    tiny.model.save_pretrained(source)
    tiny.tokenizer.save_pretrained(source)
    files = {p.name: p.read_bytes() for p in source.iterdir()}
    fake = kneuron.models.load

    def load(model=None, **kwargs):  # the atlas's tiny-llama, as if loaded from that folder
        lm = fake(model, **kwargs)
        lm.model.name_or_path = str(source)
        return lm

    monkeypatch.setattr(kneuron.models, "load", load)
    for extra in ((), ("--overwrite",)):
        result = invoke("edit", "--run", str(atlas_path), "--fact", "capital:France", "--new", "Rome",
                        "--save-model", str(source), *extra)
        assert "loaded from" in error_line(result)
    assert {p.name: p.read_bytes() for p in source.iterdir()} == files


def test_edit_method_rome_prints_and_saves(atlas_path, fake_load, tmp_path):
    result = invoke("edit", "--run", str(atlas_path), "--fact", "capital:France", "--new", "Rome", "--method", "rome",
                    "--layer", "0", "--stats-samples", "100", "--others", "1", "--save", str(tmp_path / "rome"))
    assert result.exit_code == 0, result.output
    assert "Edit(rome France capital: Paris -> Rome; 32 slots in L0)" in result.stdout
    assert "ROME at layer 0: C from 100 keys of generated text" in result.stdout and "Collateral" in result.stdout
    saved = Edit.load(tmp_path / "rome")
    assert saved.meta["method"] == "rome" and saved.meta["stats"]["samples"] == 100
    change = torch.stack([v for _, v in sorted(saved.values().items())])
    singular = torch.linalg.svdvals(change.double())  # float32 vectors: rank one up to rounding
    assert singular[0] > 0 and singular[1] < 1e-5 * singular[0]
    for args, message in ((("--method", "memit"), "--method is kn or rome"),
                          (("--method", "rome", "--stats-text", "wiki"), "--stats-text is one of generated, facts"),
                          (("--method", "rome", "--layer", "9"), "Layer 9 is out of range"),
                          (("--method", "rome", "--layer", "1"), "Layer 1 is tiny-llama's last")):
        refused = invoke("edit", "--run", str(atlas_path), "--fact", "capital:France", "--new", "Rome", *args)
        assert refused.exit_code != 0 and message in refused.output and "Traceback" not in refused.output


@pytest.mark.parametrize("value", ["3e38", "1e20"])
def test_an_edit_that_breaks_the_model_is_refused_before_anything_is_saved(atlas_path, fake_load, tmp_path, value):
    """A finite --lambda-new that overflows inside the model (3e38: non-finite logits; 1e20: a uniform output, every
    token at 1/V) is refused with the value named, and neither --save nor --save-model is written."""
    result = invoke("edit", "--run", str(atlas_path), "--fact", "capital:France", "--new", "Rome",
                    "--lambda-new", value, "--save", str(tmp_path / "edit"), "--save-model", str(tmp_path / "model"))
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"lambda_new={float(value):g}" in errors[0], result.stderr
    assert ("non-finite logits" if value == "3e38" else "uniform distribution") in errors[0]
    assert not (tmp_path / "edit").exists() and not (tmp_path / "model").exists()
