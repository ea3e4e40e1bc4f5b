"""Rich display (``_repr_html_``) of NeuronScores and KnowledgeNeurons, and the shared pieces of kneuron.display:
the pooled picture equals a slow block-by-block maximum, the numbers in the HTML are the object's, user strings
are escaped, and the HTML stays small on a big model's grid."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

from html_cells import Cells
from kneuron.attribution import IntegratedGradients, KnowledgeNeurons, Neuron, NeuronScores, find_knowledge_neurons
from kneuron.display import grid_svg, pool_abs
from kneuron.facts import Fact
from tiny_models import tiny_lm

MARKUP = '<script>alert("x")</script>&<b>'


def slow_pool(scores: torch.Tensor, rows: int, columns: int) -> list[list[float]]:
    out = []
    for r in range(0, scores.shape[0], rows):
        out.append([max(abs(float(v)) for line in scores[r:r + rows] for v in line[c:c + columns])
                    for c in range(0, scores.shape[1], columns)])
    return out


@pytest.mark.parametrize("shape", [(2, 32), (30, 1536), (18, 2048), (70, 300), (3, 1)])
def test_pooling_is_the_block_maximum_of_abs_scores(shape):
    torch.manual_seed(0)
    scores = torch.randn(*shape, dtype=torch.float64)
    pooled = pool_abs(scores)
    assert pooled.rows == math.ceil(shape[0] / 64) and pooled.columns == math.ceil(shape[1] / 128)
    assert pooled.grid.shape[0] <= 64 and pooled.grid.shape[1] <= 128
    assert pooled.grid.tolist() == slow_pool(scores, pooled.rows, pooled.columns)


def test_the_picture_stays_small_and_marks_only_known_neurons():
    torch.manual_seed(1)
    for shape in [(30, 1536), (18, 2048), (200, 20000)]:
        svg = grid_svg(torch.randn(*shape), refined=[(3, 100)], coarse=[(3, 101), (5, 7), (999, 0)])
        assert len(svg.encode()) < 200_000, shape
        assert svg.count("(refined)</title>") == 1
        # (3, 101) shares (3, 100)'s block on a big grid, so only (5, 7) is dotted; (999, 0) is outside the model
        assert svg.count("(coarse)</title>") == 1
        assert "<script" not in svg and "http://www.w3.org/2000/svg" in svg and "href" not in svg


@pytest.fixture(scope="module")
def scores() -> NeuronScores:
    torch.set_num_threads(1)
    lm = tiny_lm("llama", dtype=torch.float64, layers=3, neurons=16)
    found = IntegratedGradients(steps=6).attribute(lm, ["The capital of France is"], "Paris")[0]
    return dataclasses.replace(found, prompt=f"The capital of {MARKUP} is", answer=MARKUP)


def test_scores_html_has_the_probability_and_each_layers_completeness(scores):
    text = scores._repr_html_()
    assert f"P(answer) = <b>{scores.probability:.4g}</b>" in text
    rows = {row[0]: row[1:] for row in Cells(text).rows if row and re.fullmatch(r"L\d+", row[0])}
    for layer in range(scores.n_layers):  # slow reference: the gap from the scores and baseline themselves
        total = float(scores.scores[layer].sum())
        delta = scores.probability - float(scores.baseline[layer])
        shown = [float(cell) for cell in rows[f"L{layer}"]]
        assert shown == pytest.approx([total, delta, total - delta], rel=1e-5, abs=1e-9)
    worst = max(abs(float(g)) for g in scores.completeness_gap)
    assert f"max |gap| = <b>{worst:.4g}</b>" in text
    top = [row for row in Cells(text).rows if row and row[0].startswith("L") and ".N" in row[0]]
    assert [row[0] for row in top] == [str(n) for n in scores.top(10)]
    assert [float(row[1]) for row in top] == pytest.approx([n.score for n in scores.top(10)], rel=1e-5)


def test_scores_html_escapes_user_strings(scores):
    text = scores._repr_html_()
    assert Cells(text).scripts == 0 and "<b>'" not in text and MARKUP not in text
    assert "&lt;script&gt;" in text


def test_an_estimator_without_completeness_says_so(scores):
    text = dataclasses.replace(scores, completeness_gap=None, estimator="gxa")._repr_html_()
    assert "defines no completeness" in text and "max |gap|" not in text


@pytest.fixture(scope="module")
def knowledge() -> KnowledgeNeurons:
    torch.set_num_threads(1)
    lm = tiny_lm("llama", layers=3, neurons=16)
    fact = Fact("France", "capital", "Paris", ("The capital of [X] is [Y].", "[X] has its capital in [Y].",
                                                "In [X] the capital is [Y]."))
    kn = find_knowledge_neurons(lm, fact, estimator=IntegratedGradients(steps=4), share=0.3)
    return kn


def test_knowledge_html_lists_the_neurons_and_counts(knowledge):
    kn = dataclasses.replace(knowledge, fact=Fact(MARKUP, "capital", "Paris", ("[X] is [Y].",)),
                             warnings=[f"answer {MARKUP} is unlikely"])
    assert kn.neurons, "the tiny fact should have refined neurons"
    text = kn._repr_html_()
    rows = [row for row in Cells(text).rows if row and re.fullmatch(r"L\d+\.N\d+", row[0])]
    assert [row[0] for row in rows] == [str(n) for n in kn.neurons]
    for row, neuron in zip(rows, kn.neurons, strict=True):
        assert (int(row[1]), int(row[2])) == neuron.key and float(row[3]) == pytest.approx(neuron.score, rel=1e-5)
        coarse = sum(any(c.key == neuron.key for c in prompt) for prompt in kn.coarse)
        assert row[4] == f"{coarse}/{len(kn.coarse)}"
    assert f"<b>{len(kn.neurons)}</b> refined neurons in {len(kn.per_layer())} layers" in text
    assert text.count("(refined)</title>") == len({(n.layer, n.index) for n in kn.neurons})
    assert Cells(text).scripts == 0 and MARKUP not in text and "&lt;script&gt;" in text


def test_knowledge_html_without_scores_or_neurons():
    kn = KnowledgeNeurons([], [[Neuron(0, 1, 0.5)]], params={"share": "<x>"})
    text = kn._repr_html_()
    assert "no refined neuron" in text and "<svg" not in text and "&lt;x&gt;" in text
