"""`kneuron edit` and `kneuron erase` on an atlas made from a tiny model."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from experiments.conftest import tiny_facts
from kneuron import cli
from kneuron.interventions import Edit
from kneuron.store import Atlas, run
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


def test_run_editing_stores_rows_in_the_atlas(atlas_path, fake_load, tmp_path):
    import shutil

    from kneuron.experiments.editing import STUDY, format_summary, run_editing

    path = tmp_path / "copy.sqlite"
    shutil.copy(atlas_path, path)
    rows = run_editing(str(path), erase="capital", top=3, n_other=2, n_other_erase=3,
                       settings=(("absolute", "activation"),), log=lambda _line: None)
    with Atlas.open(path, read_only=True) as atlas:
        stored = atlas.results(STUDY)
    assert len(stored) == len(rows) > 0
    variants = {r["variant"] for r in stored}
    assert {"kn_signed", "random_signed", "erase_zero", "erase_unknown", "erase_random_zero"} <= variants
    text = format_summary(rows)
    assert "kn_signed" in text and "erase_unknown" in text
