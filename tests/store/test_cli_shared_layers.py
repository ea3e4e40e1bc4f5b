"""`kneuron find`, `run` and `erase` end to end on the tiny ALBERT (one layer's weights at 3 depths, ``--model
tiny-albert``, see conftest): what the commands give is what the library gives, neurons are (depth, index)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from kneuron import cli
from kneuron.attribution import find_knowledge_neurons
from kneuron.interventions import Edit
from kneuron.store import Atlas
from store.test_cli_store import facts_file  # noqa: F401  (the facts file fixture)

runner = CliRunner()
PROMPTS = ["The capital of France is [Y].", "The capital city of France is [Y].", "France's capital city is [Y]."]


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args], env={"COLUMNS": "200"})


def find_args(*extra):
    steps = [] if "gxa" in extra else ["--steps", "4"]  # gxa takes no --steps (refused)
    args = ["find", "--model", "tiny-albert", "--answer", "Paris", *steps, "--share", "0.5", *extra]
    for prompt in PROMPTS:
        args += ["--prompt", prompt]
    return args


def test_find_gives_the_library_result_for_ig_and_gxa(fake_load):
    for estimator in ("ig", "gxa"):
        result = invoke(*find_args("--estimator", estimator, "--json"))
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)
        lm = fake_load["tiny-albert"]
        assert lm.shared_layers and lm.n_layers == 3
        expected = find_knowledge_neurons(lm, PROMPTS, "Paris", steps=4, share=0.5, estimator=estimator)
        assert [(n["layer"], n["index"]) for n in payload["neurons"]] == expected.keys
        assert expected.keys and all(0 <= layer < 3 for layer, _ in expected.keys)
        fake_load.clear()


def test_run_then_erase(fake_load, facts_file, tmp_path):  # noqa: F811
    out = tmp_path / "albert.sqlite"
    result = invoke("run", "--model", "tiny-albert", "--facts", facts_file, "--steps", "4", "--all-facts",
                    "--out", out)
    assert result.exit_code == 0, result.output
    with Atlas.open(out, read_only=True) as atlas:
        assert (atlas.meta["family"], atlas.meta["n_layers"]) == ("albert", 3)
        kn = atlas.knowledge_neurons("capital:France")
        expected = find_knowledge_neurons(fake_load["tiny-albert"], atlas.fact("capital:France"), steps=4)
        counts = atlas.relation_neurons("capital")
    assert kn.keys == expected.keys
    result = invoke("erase", "--run", out, "--relation", "capital", "--top", "3", "--save", tmp_path / "erase")
    assert result.exit_code == 0, result.output
    assert "shared layers: the slots of L" in result.stdout and "serve depths 0, 1, 2" in result.stdout
    edit = Edit.load(tmp_path / "erase")
    slots = {index for _, index in edit.neurons}
    assert len(slots) == len(edit.neurons) == min(3, len({index for _, index in counts}))
