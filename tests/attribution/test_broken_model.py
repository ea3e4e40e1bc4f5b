"""``find`` and ``run`` refuse a model whose clean forward pass gives non-finite logits, naming the first layer
where its values stop being finite (checked against the hidden states transformers itself returns), before
anything is attributed or written."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from kneuron import cli
from kneuron.attribution import find_knowledge_neurons
from kneuron.attribution.estimators import IntegratedGradients
from kneuron.attribution.health import first_non_finite
from kneuron.errors import BrokenModelError
from kneuron.facts import Fact, encode
from kneuron.store import run
from tiny_models import tiny_lm

FACT = Fact("France", "capital", "Paris", templates=("The capital of [X] is [Y].",))
PROMPT = "The capital of France is"


def broken(where: str):
    """A tiny 3-layer Llama whose embeddings are infinite ("embeddings"), or whose layer's FFN output projection is
    finite but huge (3e38, what an edit with that lambda leaves): its forward pass overflows there. (Infinite
    weights are refused when a model folder is loaded; weights this large load and overflow only when run.)"""
    lm = tiny_lm("llama", layers=3)
    with torch.no_grad():
        if where == "embeddings":
            lm.model.get_input_embeddings().weight.fill_(math.inf)
        else:
            lm.ffn_out(int(where)).weight.fill_(3e38)
    return lm


def reference(lm, query) -> str:
    """The first non-finite one of the hidden states transformers returns: the embeddings, then block l's output
    (the last entry is after the final norm, so only blocks below the last are named this way)."""
    with torch.no_grad():
        states = lm.model(input_ids=query.input_ids[None], output_hidden_states=True).hidden_states
    for index, state in enumerate(states[:-1]):
        if not bool(torch.isfinite(state).all()):
            return "the embeddings" if index == 0 else f"layer {index - 1}"
    return "later"


@pytest.mark.parametrize(("where", "named"), [("embeddings", "the embeddings"), ("0", "layer 0"), ("1", "layer 1")])
def test_the_first_non_finite_layer_matches_the_hidden_states(where, named):
    lm = broken(where)
    query = encode(lm, PROMPT, "Paris")
    assert first_non_finite(lm, query) == reference(lm, query) == named


def test_the_last_layer_is_named_too():
    lm = broken("2")
    assert first_non_finite(lm, encode(lm, PROMPT, "Paris")) == "layer 2"


def test_find_refuses_naming_the_layer():
    with pytest.raises(BrokenModelError, match=r"non-finite logits on 'The capital of France is'.*at layer 1"):
        find_knowledge_neurons(broken("1"), FACT, estimator=IntegratedGradients(steps=2))


def test_run_refuses_before_the_atlas_exists(tmp_path):
    with pytest.raises(BrokenModelError, match="first non-finite at layer 0"):
        run(broken("0"), [FACT], tmp_path / "atlas.sqlite", steps=2, known_only=False, progress=False)
    assert not (tmp_path / "atlas.sqlite").exists()


def test_cli_find_and_run_say_it_in_one_line(tmp_path):
    lm = broken("1")
    lm.model.save_pretrained(tmp_path / "broken")
    lm.tokenizer.save_pretrained(tmp_path / "broken")
    runner = CliRunner()
    for args in (["find", "--model", str(tmp_path / "broken"), "-p", PROMPT, "-a", "Paris", "--steps", "2"],
                 ["run", "--model", str(tmp_path / "broken"), "--out", str(tmp_path / "a.sqlite"), "--steps", "2",
                  "--per-relation", "1", "--all-facts"]):
        result = runner.invoke(cli.app, args, env={"COLUMNS": "200"})
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.exit_code == 1 and len(errors) == 1 and "first non-finite at layer 1" in errors[0], \
            result.output
    assert not (tmp_path / "a.sqlite").exists()


def collapsing(layer: int):
    """A tiny 3-layer Llama whose layer's FFN output projection is finite and huge (×1e37, as an edit with a huge
    lambda leaves it): the residual stays finite (about 1e37) but its square overflows, so every RMSNorm after it
    divides it to zero and the logits are all equal: a uniform distribution, finite everywhere."""
    lm = tiny_lm("llama", layers=3)
    with torch.no_grad():
        lm.ffn_out(layer).weight.mul_(1e37)
    return lm


def test_a_collapsed_model_is_finite_everywhere_and_predicts_uniform():
    lm = collapsing(1)
    query = encode(lm, PROMPT, "Paris")
    with torch.no_grad():
        out = lm.model(input_ids=query.input_ids[None], output_hidden_states=True)
    assert all(bool(torch.isfinite(state).all()) for state in out.hidden_states)
    probabilities = torch.softmax(out.logits[0, -1].double(), dim=-1)
    assert float(probabilities.max() - probabilities.min()) < 1e-12  # every token at 1/V
    # the first block output whose mean square overflows float32, from transformers' own hidden states
    overflowed = [index - 1 for index, state in enumerate(out.hidden_states[1:-1], start=1)
                  if bool(torch.isinf(state.float().pow(2).mean(-1)).any())]
    assert overflowed[0] == 1


@pytest.mark.parametrize("layer", [0, 1])
def test_find_and_run_refuse_a_model_that_predicts_uniform_naming_the_layer(tmp_path, layer):
    with pytest.raises(BrokenModelError, match=rf"uniform distribution on .The capital of France.*at layer {layer}"):
        find_knowledge_neurons(collapsing(layer), FACT, estimator=IntegratedGradients(steps=2))
    with pytest.raises(BrokenModelError, match=rf"uniform distribution .*at layer {layer}"):
        run(collapsing(layer), [FACT], tmp_path / "atlas.sqlite", steps=2, known_only=False, progress=False)
    assert not (tmp_path / "atlas.sqlite").exists()


def test_cli_run_refuses_a_saved_collapsed_model_in_one_line(tmp_path):
    lm = collapsing(1)
    lm.model.save_pretrained(tmp_path / "collapsed")
    lm.tokenizer.save_pretrained(tmp_path / "collapsed")
    result = CliRunner().invoke(cli.app, ["run", "--model", str(tmp_path / "collapsed"), "--out",
                                          str(tmp_path / "a.sqlite"), "--steps", "2", "--per-relation", "1",
                                          "--all-facts"], env={"COLUMNS": "200"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 1 and len(errors) == 1 and "uniform distribution" in errors[0] \
        and "at layer 1" in errors[0], result.output
    assert not (tmp_path / "a.sqlite").exists()
