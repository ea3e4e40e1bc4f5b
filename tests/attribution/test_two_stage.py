"""Two-stage integrated gradients against a slow reference built from the naive integrand: the screen is the mean
of the naive integrand at the screen's α points, the layers finished are those the rule of
:mod:`kneuron.attribution.two_stage` picks from it (written here again in plain loops), and a finished layer's
scores are the full Riemann sum's (exact integrated gradients there)."""

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
from kneuron.models.hooks import on_ffn_input
from tiny_models import tiny_lm


def naive_ablation_effect(lm, query) -> list[float]:
    """P(answer) − P(answer with one layer's activation at the answer position set to 0), per layer."""
    def probability(layer: int | None) -> float:
        def put(x):
            out = x.clone()
            out[0, query.position] = 0.0
            return out

        with torch.no_grad():
            if layer is None:
                logits = lm.model(input_ids=query.input_ids[None]).logits[0]
            else:
                with on_ffn_input(lm, layer, put):
                    logits = lm.model(input_ids=query.input_ids[None]).logits[0]
        log_probs = torch.log_softmax(logits[list(query.target_positions)].double(), dim=-1)
        return float(sum(log_probs[i, a] for i, a in enumerate(query.answer_ids)).exp())

    clean = probability(None)
    return [clean - probability(layer) for layer in range(lm.n_layers)]


def plain_walk(counts: dict, prompts: int) -> list[float]:
    """The shares the adaptive refinement looks at (start 0.7, step 0.05, aim for 2 to 5), in plain Python."""
    def kept(share):
        return [key for key, c in counts.items() if c > share * prompts]

    share, looked, chosen = 0.7, [0.7], kept(0.7)
    while not 2 <= len(chosen) <= 5:
        step = -0.05 if len(chosen) < 2 else 0.05
        new_share = round(share + step, 10)
        if not 0.0 < new_share < 1.0:
            break
        new = kept(new_share)
        looked.append(new_share)
        if (len(chosen) < 2 and len(new) > 5) or (len(chosen) > 5 and len(new) < 2):
            break
        chosen, share = new, new_share
    return looked


def reference_two_stage(integrands: list[torch.Tensor], effects: list[list[float]], screen: list[int],
                        margin: float, top_margin: float, ablation_margin: float, threshold: float = 0.2,
                        ) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Per prompt, (steps, layers, neurons) integrands and per-layer ablation effects -> (the scores, the finished
    layers), by the module's rule in plain loops."""
    prompts, layers, neurons = len(integrands), integrands[0].shape[1], integrands[0].shape[2]
    screened = [x[screen].mean(0) for x in integrands]
    exact = [x.mean(0) for x in integrands]
    done: list[set[int]] = [set() for _ in range(prompts)]
    for p in range(prompts):
        top = max(float(screened[p][layer].max()) for layer in range(layers))
        done[p] |= {layer for layer in range(layers) if effects[p][layer] >= ablation_margin * max(top, 0.0)}
        while True:
            best = max(float(exact[p][layer].max()) for layer in done[p]) if done[p] else top
            more = {layer for layer in range(layers)
                    if layer not in done[p] and float(screened[p][layer].max()) >= top_margin * best}
            if not more:
                break
            done[p] |= more
    while True:
        low: dict = {}
        high: dict = {}
        maybe_at: dict = {}
        for p in range(prompts):
            bar = threshold * max(max(float(exact[p][layer].max()) for layer in done[p]), 0.0)
            for layer in range(layers):
                for i in range(neurons):
                    key = (layer, i)
                    if layer in done[p]:
                        if float(exact[p][layer, i]) > bar:
                            low[key] = low.get(key, 0) + 1
                            high[key] = high.get(key, 0) + 1
                    elif float(screened[p][layer, i]) >= margin * bar and float(screened[p][layer, i]) > 0:
                        high[key] = high.get(key, 0) + 1
                        maybe_at.setdefault(key, []).append(p)
        shares = set(plain_walk(low, prompts)) | set(plain_walk(high, prompts))
        more = [(p, key[0]) for key in high for share in shares
                if low.get(key, 0) <= share * prompts < high[key] for p in maybe_at.get(key, [])]
        if not more:
            break
        for p, layer in more:
            done[p].add(layer)
    scores = []
    for p in range(prompts):
        mine = torch.zeros_like(exact[p])
        for layer in done[p]:
            mine[layer] = exact[p][layer]
        scores.append(mine)
    return scores, [sorted(d) for d in done]


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize(("points", "margin", "top_margin", "ablation"),
                         [(1, 0.7, 0.8, 1.0), (2, 0.7, 0.8, 1.0), (2, 0.05, 0.3, 0.2), (3, 1.0, 1.0, 5.0)])
def test_two_stage_matches_the_naive_reference(family, points, margin, top_margin, ablation):
    lm = tiny_lm(family, dtype=torch.float64, layers=4)
    steps = 6
    estimator = TwoStageIntegratedGradients(steps=steps, screen_points=points, margin=margin, top_margin=top_margin,
                                            ablation_margin=ablation)
    prompts = [PROMPTS[lm.kind], PROMPTS[lm.kind].replace("capital", "main city"),
               PROMPTS[lm.kind].replace("The capital", "Capital")]
    bag = estimator.attribute(lm, prompts, "Paris")
    queries = [encode(lm, prompt, "Paris") for prompt in prompts]
    integrands = [torch.stack([naive_integrand(lm, q, float(a)) for a in alpha_points(steps)]).double()
                  for q in queries]
    want, finished = reference_two_stage(integrands, [naive_ablation_effect(lm, q) for q in queries],
                                         screen_indices(steps, points), margin, top_margin, ablation)
    for scores, expected, layers in zip(bag, want, finished, strict=True):
        assert list(scores.screen_layers) == layers
        # 1e-6 as for exact IG: Llama's RMSNorm and eager attention compute in float32 in a float64 model
        assert float((scores.scores - expected).abs().max()) <= 1e-6 * float(expected.abs().max())
        assert scores.estimator == "two-stage-ig"
        unfinished = [layer for layer in range(lm.n_layers) if layer not in layers]
        assert all(math.isnan(scores.completeness_gap[layer]) for layer in unfinished)
        assert all(math.isfinite(scores.completeness_gap[layer]) for layer in layers)


def test_finishing_every_layer_is_exact_integrated_gradients():
    lm = tiny_lm("llama", dtype=torch.float64, layers=4)
    prompts = [PROMPTS["causal"], "The main city of France is"]
    everything = TwoStageIntegratedGradients(steps=8, top_margin=1e-12).attribute(lm, prompts, "Paris")
    full = IntegratedGradients(steps=8).attribute(lm, prompts, "Paris")
    for mine, theirs in zip(everything, full, strict=True):
        assert mine.screen_layers == (0, 1, 2, 3)
        assert torch.allclose(mine.scores, theirs.scores, rtol=1e-12, atol=1e-15)
        assert torch.allclose(mine.completeness_gap, theirs.completeness_gap, rtol=1e-9, atol=1e-12)
    assert refine(everything).keys == refine(full).keys


def test_the_screen_points_are_the_middles_of_equal_groups():
    assert screen_indices(20, 1) == [9]  # α = 0.5
    assert screen_indices(20, 2) == [4, 14]  # α = 0.25, 0.75
    assert screen_indices(20, 4) == [2, 7, 12, 17]
    assert screen_indices(20, 20) == list(range(20))
    assert screen_indices(5, 5) == [0, 1, 2, 3, 4]
    with pytest.raises(InputError, match="more than steps"):
        screen_indices(4, 5)


def test_params_rebuild_it_and_bad_settings_are_refused_in_one_line():
    estimator = TwoStageIntegratedGradients(steps=12, screen_points=3, margin=0.25, threshold=0.3)
    assert estimator.params() == {"estimator": "two-stage-ig", "steps": 12, "alphas": "right", "objective": "prob",
                                  "screen_points": 3, "margin": 0.25, "top_margin": 0.8, "ablation_margin": 1.0,
                                  "threshold": 0.3, "share": "adaptive"}
    assert estimator_from_params(estimator.params()) == estimator
    assert estimator_named("two-stage-ig", steps=12, screen_points=3, margin=0.25, threshold=0.3) == estimator
    for bad, message in [({"alphas": "gauss"}, "equally weighted"), ({"margin": 0.0}, "margin=0.0"),
                         ({"margin": 1.5}, "margin=1.5"), ({"threshold": -1}, "threshold=-1"),
                         ({"top_margin": 0.0}, "top_margin=0.0"), ({"share": 1.0}, "share=1.0"),
                         ({"share": "most"}, "share='most'"), ({"ablation_margin": -1}, "ablation_margin=-1"),
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
