"""Two-stage integrated gradients against a slow reference built from the naive integrand: the screen is the mean
of the naive integrand at the screen's α points, the layers finished are those the adaptive rule picks from it,
and a finished layer's scores are the full Riemann sum's (exact integrated gradients there)."""

from __future__ import annotations

import math

import pytest
import torch

from attribution.test_estimators import PROMPTS, naive_integrand
from kneuron.attribution import refine
from kneuron.attribution.estimators import (
    IntegratedGradients,
    TwoStageIntegratedGradients,
    estimator_from_params,
    estimator_named,
)
from kneuron.attribution.integrated_gradients import alpha_points
from kneuron.attribution.two_stage import screen_indices
from kneuron.errors import InputError
from kneuron.facts import encode
from tiny_models import tiny_lm


def reference_two_stage(integrands: torch.Tensor, screen: list[int], threshold: float, margin: float,
                        ) -> tuple[torch.Tensor, list[int]]:
    """(steps, layers, neurons) integrands -> (the scores, the finished layers), by the rule in plain loops."""
    layers = integrands.shape[1]
    screened = integrands[screen].mean(0)
    exact = integrands.mean(0)
    tops = [float(screened[layer].max()) for layer in range(layers)]
    done: list[int] = []
    while True:
        top = max(float(exact[layer].max()) for layer in done) if done else max(tops)
        more = [layer for layer in range(layers) if layer not in done and tops[layer] >= margin * threshold * top]
        if not more:
            break
        done += more
    scores = torch.zeros_like(exact)
    for layer in done:
        scores[layer] = exact[layer]
    return scores, sorted(done)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize(("points", "margin"), [(1, 0.5), (2, 0.5), (2, 2e-3), (3, 1.0)])
def test_two_stage_matches_the_naive_reference(family, points, margin):
    lm = tiny_lm(family, dtype=torch.float64, layers=4)
    steps = 6
    estimator = TwoStageIntegratedGradients(steps=steps, screen_points=points, margin=margin)
    prompts = [PROMPTS[lm.kind], PROMPTS[lm.kind].replace("capital", "main city")]
    bag = estimator.attribute(lm, prompts, "Paris")
    for prompt, scores in zip(prompts, bag, strict=True):
        query = encode(lm, prompt, "Paris")
        integrands = torch.stack([naive_integrand(lm, query, float(a)) for a in alpha_points(steps)]).double()
        want, finished = reference_two_stage(integrands, screen_indices(steps, points), 0.2, margin)
        assert list(scores.screen_layers) == finished
        # 1e-6 as for exact IG: Llama's RMSNorm and eager attention compute in float32 in a float64 model
        assert float((scores.scores - want).abs().max()) <= 1e-6 * float(want.abs().max())
        assert scores.estimator == "two-stage-ig"
        unfinished = [layer for layer in range(lm.n_layers) if layer not in finished]
        assert all(math.isnan(scores.completeness_gap[layer]) for layer in unfinished)
        assert all(math.isfinite(scores.completeness_gap[layer]) for layer in finished)


def test_finishing_every_layer_is_exact_integrated_gradients():
    lm = tiny_lm("llama", dtype=torch.float64, layers=4)
    prompts = [PROMPTS["causal"], "The main city of France is"]
    everything = TwoStageIntegratedGradients(steps=8, margin=1e-12).attribute(lm, prompts, "Paris")
    full = IntegratedGradients(steps=8).attribute(lm, prompts, "Paris")
    for mine, theirs in zip(everything, full, strict=True):
        assert mine.screen_layers == (0, 1, 2, 3)
        assert torch.allclose(mine.scores, theirs.scores, rtol=1e-12, atol=1e-15)
        assert torch.allclose(mine.completeness_gap, theirs.completeness_gap, rtol=1e-9, atol=1e-12)
    assert refine(everything).keys == refine(full).keys


def test_the_screen_points_are_the_last_of_evenly_spaced_groups():
    assert screen_indices(20, 1) == [19]  # α = 1: gradient x activation
    assert screen_indices(20, 2) == [9, 19]  # α = 0.5, 1
    assert screen_indices(20, 4) == [4, 9, 14, 19]
    assert screen_indices(5, 5) == [0, 1, 2, 3, 4]
    with pytest.raises(InputError, match="more than steps"):
        screen_indices(4, 5)


def test_params_rebuild_it_and_bad_settings_are_refused_in_one_line():
    estimator = TwoStageIntegratedGradients(steps=12, screen_points=3, margin=0.25, threshold=0.3)
    assert estimator.params() == {"estimator": "two-stage-ig", "steps": 12, "alphas": "right", "objective": "prob",
                                  "screen_points": 3, "margin": 0.25, "threshold": 0.3}
    assert estimator_from_params(estimator.params()) == estimator
    assert estimator_named("two-stage-ig", steps=12, screen_points=3, margin=0.25, threshold=0.3) == estimator
    for bad, message in [({"alphas": "gauss"}, "equally weighted"), ({"margin": 0.0}, "margin=0.0"),
                         ({"margin": 1.5}, "margin=1.5"), ({"threshold": -1}, "threshold=-1"),
                         ({"screen_points": 0}, "screen_points"), ({"steps": 2, "screen_points": 3}, "more than")]:
        with pytest.raises(InputError, match=message):
            TwoStageIntegratedGradients(**bad)


def test_it_aims_at_the_runs_coarse_threshold(tmp_path):
    """By name it takes the call's threshold; an object that aims at another one is refused in one line."""
    from kneuron.attribution import find_knowledge_neurons
    from kneuron.store import Atlas, run
    from store.helpers import tiny_facts

    lm = tiny_lm("llama", dtype=torch.float64, layers=4)
    prompts = [PROMPTS["causal"], "The main city of France is"]
    kn = find_knowledge_neurons(lm, prompts, "Paris", estimator="two-stage-ig", threshold=0.3)
    assert kn.params["threshold"] == 0.3 and kn.params["estimator"] == "two-stage-ig"
    with pytest.raises(InputError, match="aims at the coarse threshold 0.2"):
        find_knowledge_neurons(lm, prompts, "Paris", estimator=TwoStageIntegratedGradients(), threshold=0.3)
    path = tmp_path / "two-stage.sqlite"
    run(lm, tiny_facts()[:2], path, estimator="two-stage-ig", steps=4, threshold=0.3, known_only=False,
        progress=False)
    with Atlas.open(path, read_only=True) as atlas:
        assert estimator_from_params(atlas.meta["params"]) == TwoStageIntegratedGradients(steps=4, threshold=0.3)
        assert len(atlas.facts()) == 2
    with pytest.raises(InputError, match="aims at the coarse threshold 0.2 but the run's is 0.3"):
        run(lm, tiny_facts()[:2], tmp_path / "other.sqlite", estimator=TwoStageIntegratedGradients(steps=4),
            threshold=0.3, known_only=False, progress=False)
    assert not (tmp_path / "other.sqlite").exists()


def test_the_estimators_study_compares_it_only_when_named():
    from kneuron.studies.estimator_agreement import default_estimators, estimator_for

    assert "two-stage-ig" not in default_estimators() and "gxa" in default_estimators()
    named = estimator_for("two-stage-ig", {"steps": 8, "objective": "prob", "alphas": "right", "threshold": 0.3})
    assert named == TwoStageIntegratedGradients(steps=8, threshold=0.3)
