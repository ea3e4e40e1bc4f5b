"""`kneuron find` and `kneuron run` with --estimator, --alphas and --screen on tiny models (``--model tiny-<family>``,
see conftest), and `kneuron atlas` showing the estimator; bad values are one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from kneuron import cli
from kneuron.attribution import IntegratedGradients, ScreenedIntegratedGradients, find_knowledge_neurons
from kneuron.attribution.estimators import estimator_names
from kneuron.store import Atlas, run
from store.helpers import tiny_facts
from store.test_cli_store import facts_file, run_args  # noqa: F401  (the facts file fixture)

runner = CliRunner()
PROMPTS = ["The capital of France is", "The capital city of France is", "France has its capital at"]


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args], env={"COLUMNS": "200"})


def find_args(*extra):
    steps = [] if "gxa" in extra else ["--steps", "4"]  # gxa takes no --steps (refused)
    args = ["find", "--model", "tiny-llama", "--answer", "Paris", *steps, "--share", "0.5", *extra]
    for prompt in PROMPTS:
        args += ["--prompt", prompt]
    return args


def test_find_with_gxa_gives_the_library_result(fake_load):
    result = invoke(*find_args("--estimator", "gxa", "--json"))
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    expected = find_knowledge_neurons(fake_load["tiny-llama"], PROMPTS, "Paris", share=0.5, estimator="gxa")
    assert [(n["layer"], n["index"]) for n in payload["neurons"]] == expected.keys
    assert payload["params"]["estimator"] == "gxa" and payload["params"] == json.loads(json.dumps(expected.params))
    ig = find_knowledge_neurons(fake_load["tiny-llama"], PROMPTS, "Paris", steps=4, share=0.5)
    assert expected.params != ig.params
    table = invoke(*find_args("--estimator", "gxa"))
    assert table.exit_code == 0 and "estimator gxa" in table.stdout


def test_find_with_a_screen_and_gauss_alphas(fake_load):
    result = invoke(*find_args("--screen", "2", "--alphas", "gauss", "--json"))
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    screened = ScreenedIntegratedGradients(2, IntegratedGradients(steps=4, alphas="gauss"))
    expected = find_knowledge_neurons(fake_load["tiny-llama"], PROMPTS, "Paris", share=0.5, estimator=screened)
    chosen = expected.scores[0].screen_layers
    assert [(n["layer"], n["index"]) for n in payload["neurons"]] == expected.keys
    assert payload["params"]["screen"] == 2 and payload["params"]["alphas"] == "gauss"
    assert payload["params"]["screen_layers"] == ",".join(map(str, chosen)) and len(chosen) == 2


@pytest.mark.parametrize(("extra", "message"), [
    (("--estimator", "nope"), "error: Unknown estimator 'nope': use --estimator ig or gxa"),
    (("--estimator", "gxa", "--screen", "2"), "error: --screen 2 picks the layers where exact integrated gradients "
                                              "runs, so it needs --estimator ig, not gxa"),
    (("--alphas", "simpson"), "error: Unknown alpha rule 'simpson'"),
])
def test_bad_estimator_options_are_one_line_errors(fake_load, facts_file, tmp_path, extra, message):  # noqa: F811
    out = tmp_path / "never.sqlite"
    for args in (find_args(*extra), run_args(facts_file, out, *extra)):
        result = invoke(*args)
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.output
        assert not fake_load  # refused before the model loads
    assert not out.exists()


def test_help_lists_the_registered_estimators():
    for command in ("find", "run"):
        result = invoke(command, "--help")
        assert result.exit_code == 0
        assert all(name in result.stdout for name in estimator_names()) and "--screen" in result.stdout


def test_run_with_gxa_and_atlas_shows_it(fake_load, facts_file, tmp_path):  # noqa: F811
    out = tmp_path / "gxa.sqlite"
    args = [a for a in run_args(facts_file, out, "--estimator", "gxa", "--keep-scores", "full", "--chunk-facts", "3")]
    del args[args.index("--steps"):args.index("--steps") + 2]  # gxa takes no --steps (refused)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    lm = fake_load["tiny-llama"]
    direct = tmp_path / "direct.sqlite"
    run(lm, tiny_facts(), direct, estimator="gxa", steps=4, known_only=False, progress=False, chunk_facts=3,
        keep_scores="full")
    with Atlas.open(out, read_only=True) as atlas, Atlas.open(direct, read_only=True) as want:
        assert atlas.meta["params"] == want.meta["params"] and atlas.meta["params"]["estimator"] == "gxa"
        for fact in tiny_facts():
            assert atlas.knowledge_neurons(fact.id) == want.knowledge_neurons(fact.id)
            assert all(torch.equal(a.scores, b.scores) for a, b in
                       zip(atlas.prompt_scores(fact.id), want.prompt_scores(fact.id), strict=True))
    shown = invoke("atlas", "--run", out)
    assert shown.exit_code == 0, shown.output
    assert "estimator: gxa (objective prob)" in shown.stdout
    again = invoke(*run_args(facts_file, out, "--keep-scores", "full", "--chunk-facts", "3"))  # ig into a gxa atlas
    assert again.exit_code == 1 and "estimator: atlas 'gxa', this run 'ig'" in again.stderr
    assert "Traceback" not in again.output


def test_run_with_a_screen_and_atlas_shows_it(fake_load, facts_file, tmp_path):  # noqa: F811
    out = tmp_path / "screened.sqlite"
    result = invoke(*run_args(facts_file, out, "--screen", "2"))
    assert result.exit_code == 0, result.output
    with Atlas.open(out, read_only=True) as atlas:
        params = atlas.meta["params"]
        assert (params["estimator"], params["screen"], params["screen_estimator"]) == ("ig", 2, "gxa")
        fact = tiny_facts()[0]
        layers = atlas.knowledge_neurons(fact.id).params["screen_layers"]
        assert len(layers.split(",")) == 2
    shown = invoke("atlas", "--run", out)
    assert "estimator: ig (exact integrated gradients, 4 steps, alphas right), screened to each fact's 2 best " \
           "layers by gxa" in shown.stdout
    one = invoke("atlas", "--run", out, "--fact", fact.id)
    assert one.exit_code == 0 and f"Screened: integrated gradients ran in layers {layers}" in one.stdout
    plain = tmp_path / "plain.sqlite"
    assert invoke(*run_args(facts_file, plain)).exit_code == 0
    assert "estimator: ig (exact integrated gradients, 4 steps, alphas right)\n" in invoke("atlas", "--run",
                                                                                            plain).stdout
