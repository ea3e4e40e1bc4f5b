"""The estimator object is the one way to choose an attribution. The keyword route (an estimator's settings passed
to find_knowledge_neurons / attribute_bag) and integrated_gradients_many still work, bit for bit as the estimator
route, but warn (FutureWarning) with the replacement's name; the package itself never takes them."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest
import torch

from kneuron.attribution import (
    GradientTimesActivation,
    IntegratedGradients,
    attribute_bag,
    find_knowledge_neurons,
    integrated_gradients_many,
)
from tiny_models import tiny_lm

PROMPTS = ["The capital of France is", "The capital city of France is"]
SOURCE = Path(__file__).resolve().parents[2] / "src" / "kneuron"
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama", dtype=torch.float64, layers=3)


def same_scores(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x.scores, y.scores) and torch.equal(x.activations, y.activations)
                                    and x.probability == y.probability for x, y in zip(a, b, strict=True))


def test_find_knowledge_neurons_with_steps_warns_and_gives_the_estimator_route(lm):
    with pytest.warns(FutureWarning, match=r"find_knowledge_neurons\(\.\.\., steps=, alphas=\) is deprecated: "
                                           r"pass estimator=IntegratedGradients\(steps=\.\.\., alphas=\.\.\.\)"):
        old = find_knowledge_neurons(lm, PROMPTS, "Paris", steps=3, alphas="midpoint", share=0.5)
    new = find_knowledge_neurons(lm, PROMPTS, "Paris", estimator=IntegratedGradients(steps=3, alphas="midpoint"),
                                 share=0.5)
    assert same_scores(old.scores, new.scores)
    assert old.neurons == new.neurons and old.coarse == new.coarse and old.params == new.params


def test_attribute_bag_with_settings_warns_and_gives_the_estimator_route(lm):
    with pytest.warns(FutureWarning, match=r"attribute_bag\(\.\.\., steps=, batch_rows=\) is deprecated: "
                                           r"pass estimator=IntegratedGradients\("):
        old = attribute_bag(lm, PROMPTS, "Paris", steps=2, batch_rows=5, layers=[0, 2])
    assert same_scores(old, IntegratedGradients(steps=2, batch_rows=5).attribute(lm, PROMPTS, "Paris",
                                                                                 layers=[0, 2]))


def test_a_setting_beside_a_name_warns_with_that_estimator_s_class(lm):
    with pytest.warns(FutureWarning, match=r"pass estimator=GradientTimesActivation\(objective=\.\.\.\)"):
        old = find_knowledge_neurons(lm, PROMPTS, "Paris", estimator="gxa", objective="logprob")
    new = find_knowledge_neurons(lm, PROMPTS, "Paris", estimator=GradientTimesActivation("logprob"))
    assert same_scores(old.scores, new.scores) and old.params == new.params


def test_integrated_gradients_many_warns_and_equals_the_estimator(lm):
    with pytest.warns(FutureWarning, match=r"integrated_gradients_many\(.*\) is deprecated: use "
                                           r"IntegratedGradients\(steps=\.\.\.\)\.attribute\(lm, prompts, answer\)"):
        old = integrated_gradients_many(lm, PROMPTS, "Paris", steps=3, objective="logprob")
    assert same_scores(old, IntegratedGradients(3, objective="logprob").attribute(lm, PROMPTS, "Paris"))


def test_the_estimator_route_does_not_warn(lm):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        find_knowledge_neurons(lm, PROMPTS, "Paris", estimator=IntegratedGradients(steps=2), layers=[1])
        find_knowledge_neurons(lm, PROMPTS[:1], "Paris")  # the default: IntegratedGradients()
        attribute_bag(lm, PROMPTS, "Paris", estimator="gxa", layers=[1], on_prompt=lambda i, s: None)


DEPRECATED_KEYWORDS = {"steps", "objective", "alphas", "memory_budget", "batch_rows", "norm"}


def _deprecated_calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name == "integrated_gradients_many":
            found.append(f"{path}:{node.lineno} integrated_gradients_many")
        elif name in ("find_knowledge_neurons", "attribute_bag"):
            keywords = {k.arg for k in node.keywords} & DEPRECATED_KEYWORDS
            if keywords or any(k.arg is None for k in node.keywords):  # **kwargs could carry them
                found.append(f"{path}:{node.lineno} {name}({', '.join(sorted(keywords)) or '**'})")
    return found


def test_the_package_and_benchmarks_take_no_deprecated_route():
    paths = [*SOURCE.rglob("*.py"), *BENCHMARKS.rglob("*.py")]
    assert paths
    assert [call for path in paths for call in _deprecated_calls(path)] == []
