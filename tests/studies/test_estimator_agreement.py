"""The estimator-agreement study: its metrics against direct hand computations, IG against itself, and the rows of
a cheaper estimator against the same quantities computed by hand on a tiny atlas."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
import torch

from kneuron.attribution import GradientTimesActivation, IntegratedGradients, Neuron, refine
from kneuron.attribution.estimators import Estimator
from kneuron.errors import KneuronError
from kneuron.store import Atlas, run
from kneuron.studies import summarize
from kneuron.studies.estimator_agreement import (
    agreement_summary,
    average_ranks,
    default_estimators,
    estimator_agreement,
    estimator_for,
    exact_ig_refusal,
    jaccard,
    score_agreement,
    spearman,
    top_recall,
)
from store.helpers import tiny_facts, tiny_model
from studies.conftest import probability_by_hand

# ------------------------------------------------------------------------------------- metrics by hand


def ranks_by_hand(values) -> list[float]:
    """Rank i = 1 + how many are smaller + (how many others are equal) / 2: the mean rank of its tie group."""
    return [1 + sum(v < x for v in values) + (sum(v == x for v in values) - 1) / 2 for x in values]


def spearman_by_hand(a, b) -> float:
    """Pearson's formula on the hand ranks, written out."""
    ra, rb = ranks_by_hand(list(a)), ranks_by_hand(list(b))
    n = len(ra)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb)


def test_ranks_and_spearman_equal_a_direct_rank_computation_with_ties():
    rng = np.random.default_rng(0)
    assert list(average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0]))) == [4.0, 1.0, 4.0, 2.0, 4.0]
    for _ in range(30):
        n = int(rng.integers(2, 40))
        a = rng.integers(0, 5, n).astype(float)  # many ties
        b = rng.integers(0, 5, n).astype(float) + (rng.random(n) < 0.5) * rng.random(n)
        assert list(average_ranks(a)) == ranks_by_hand(list(a))
        if len(set(a)) > 1 and len(set(b)) > 1:
            assert spearman(a, b) == pytest.approx(spearman_by_hand(a, b), abs=1e-12)
    # monotone maps keep the ranks; reversal flips the sign
    x = rng.normal(size=50)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert spearman(x, -x ** 3) == pytest.approx(-1.0)
    assert spearman([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.5)  # 1 - 6*2 / (3*8)
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))  # constant side: no correlation
    assert math.isnan(spearman([1.0], [2.0]))
    with pytest.raises(KneuronError, match="equally long"):
        spearman([1.0, 2.0], [1.0, 2.0, 3.0])


def test_top_recall_by_hand():
    reference = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0])
    estimate = np.array([9.0, 0.0, 7.0, 0.0, 5.0, 8.0])  # top 3: 0, 5, 2
    assert top_recall(reference, estimate, k=3) == pytest.approx(2 / 3)  # {0, 1, 2} & {0, 5, 2}
    assert top_recall(reference, reference, k=3) == 1.0
    assert top_recall(reference, -reference, k=3) == 0.0
    assert top_recall(reference, estimate, k=10) == 1.0  # k capped at the size: every neuron is in both
    # a (layers, neurons) matrix is ranked flat; ties go to the lower index
    assert top_recall(np.array([[1.0, 1.0], [0.0, 0.0]]), np.array([[1.0, 0.0], [1.0, 0.0]]), k=1) == 1.0


def test_jaccard_by_hand_including_empty_sets():
    a, b = [Neuron(0, 1), Neuron(2, 3)], [(2, 3), (1, 1)]
    assert jaccard(a, b) == pytest.approx(1 / 3)
    assert jaccard(a, a) == 1.0
    assert jaccard([], []) == 1.0  # both empty: they agree
    assert jaccard(a, []) == 0.0 and jaccard([], b) == 0.0
    assert jaccard([(0, 1), (0, 1)], [(0, 1)]) == 1.0  # sets: repeats count once


def test_score_agreement_over_kept_neurons_is_the_subset_computation():
    rng = np.random.default_rng(1)
    bags = [[torch.tensor(rng.normal(size=(3, 8))) for _ in range(4)] for _ in range(2)]
    scores = [[_scores(m) for m in bag] for bag in bags]
    kept = np.array([0, 3, 5, 8, 9, 17, 20, 23])
    rho, recall = score_agreement(scores[0], scores[1], kept, k=3)
    flat = [[m.numpy().reshape(-1) for m in bag] for bag in bags]
    assert rho == pytest.approx(np.mean([spearman_by_hand(a[kept], b[kept]) for a, b in zip(*flat, strict=True)]))
    assert recall == pytest.approx(np.mean([len(set(np.argsort(-a[kept])[:3]) & set(np.argsort(-b[kept])[:3])) / 3
                                            for a, b in zip(*flat, strict=True)]))
    full_rho, _ = score_agreement(scores[0], scores[1], None, k=3)
    assert full_rho == pytest.approx(np.mean([spearman_by_hand(a, b) for a, b in zip(*flat, strict=True)]))
    with pytest.raises(KneuronError, match="prompts"):
        score_agreement(scores[0], scores[1][:2])


def _scores(matrix: torch.Tensor):
    from kneuron.attribution import NeuronScores

    layers = matrix.shape[0]
    return NeuronScores(matrix, torch.zeros_like(matrix), 0.5, torch.zeros(layers), torch.zeros(layers))


# ------------------------------------------------------------------------------------------ on tiny atlases


def _atlas_inputs(path):
    with Atlas.open(path, read_only=True) as atlas, atlas.snapshot():
        facts, params = atlas.facts(), atlas.params
        scores = {f.id: atlas.prompt_scores(f.id) for f in facts}
        kept = ({f.id: atlas.prompt_sparse(f.id)[0][0] for f in facts}
                if params["keep_scores"] == "sparse" else None)
        seconds = {r["id"]: r["compute_seconds"] for r in atlas.fact_rows("done")}
        return facts, params, scores, atlas.all_refined(), kept, seconds


@pytest.fixture(scope="module", params=["full", "sparse"])
def tiny_atlas(request, tmp_path_factory):
    torch.set_num_threads(1)
    lm = tiny_model(dtype=torch.float64)
    path = tmp_path_factory.mktemp("estimators") / f"{request.param}.sqlite"
    run(lm, tiny_facts()[:6], path, steps=4, known_only=False, progress=False, share=0.3,
        keep_scores=request.param, chunk_facts=1)
    return lm, path


def by_fact(rows, variant, metric):
    return {r["fact_id"]: r["value"] for r in rows if r["variant"] == variant and r["metric"] == metric
            and r["fact_id"]}


def test_ig_against_itself_agrees_fully(tiny_atlas):
    lm, path = tiny_atlas
    facts, params, scores, refined, kept, seconds = _atlas_inputs(path)
    assert any(refined.values())
    same = IntegratedGradients(steps=params["steps"], alphas=params["alphas"], objective=params["objective"])
    rows = estimator_agreement(lm, facts, scores, refined, {"ig-exact": same}, threshold=params["threshold"],
                               share=params["share"], kept=kept, ig_seconds=seconds, seed=5)
    metric = "spearman" if kept is None else "spearman_kept"
    assert by_fact(rows, "ig-exact", metric) == pytest.approx(dict.fromkeys(refined, 1.0), abs=1e-9)
    assert not by_fact(rows, "ig-exact", "spearman_kept" if kept is None else "spearman")  # only the one variant
    assert by_fact(rows, "ig-exact", "top_recall") == dict.fromkeys(refined, 1.0)
    assert by_fact(rows, "ig-exact", "refined_jaccard") == dict.fromkeys(refined, 1.0)
    width = lm.n_layers * lm.n_neurons
    counts = by_fact(rows, "ig-exact", "spearman_neurons")
    assert counts == ({f: width for f in refined} if kept is None else {f: len(kept[f]) for f in refined})
    if kept is not None:
        assert all(0 < len(kept[f]) < width for f in refined)  # the sparse atlas really kept a subset
    suppress, ig = by_fact(rows, "ig-exact", "suppress"), by_fact(rows, "ig", "suppress")
    assert suppress and suppress == pytest.approx(ig, rel=1e-12)
    assert by_fact(rows, "ig-exact", "suppress_ig") == ig
    assert by_fact(rows, "ig-exact", "suppress_random") == pytest.approx(by_fact(rows, "ig", "suppress_random"))
    # IG's seconds are the atlas's compute seconds per prompt
    assert by_fact(rows, "ig", "seconds_per_prompt") == pytest.approx(
        {f.id: seconds[f.id] / len(f.templates) for f in facts})
    summary = {entry["estimator"]: entry for entry in agreement_summary(rows)}
    assert summary["ig-exact"]["spearman"] == pytest.approx(1.0)
    assert summary["ig-exact"]["spearman_over"] == ("all" if kept is None else "kept")
    assert summary["ig-exact"]["refined_jaccard"] == 1.0 and summary["ig-exact"]["top_recall"] == 1.0


def test_cheaper_estimator_rows_equal_the_hand_computation(tiny_atlas):
    lm, path = tiny_atlas
    facts, params, scores, refined, kept, seconds = _atlas_inputs(path)
    gxa = GradientTimesActivation(objective=params["objective"])
    rows = estimator_agreement(lm, facts, scores, refined, {"gxa": gxa}, threshold=params["threshold"],
                               share=params["share"], kept=kept, seed=2)
    metric = "spearman" if kept is None else "spearman_kept"
    jaccards, recalls, rhos = (by_fact(rows, "gxa", m) for m in ("refined_jaccard", "top_recall", metric))
    suppress, random_rows = by_fact(rows, "gxa", "suppress"), by_fact(rows, "gxa", "suppress_random")
    differs = 0
    for fact in facts:
        estimate = gxa.attribute(lm, fact.prompts(), fact.object)
        flat = [(s.scores.double().numpy().reshape(-1), e.scores.double().numpy().reshape(-1))
                for s, e in zip(scores[fact.id], estimate, strict=True)]
        if kept is not None:
            flat = [(a[kept[fact.id]], b[kept[fact.id]]) for a, b in flat]
        assert rhos[fact.id] == pytest.approx(np.mean([spearman_by_hand(a, b) for a, b in flat]), abs=1e-9)
        assert recalls[fact.id] == pytest.approx(np.mean(
            [len(set(np.argsort(-a)[:10]) & set(np.argsort(-b)[:10])) / 10 for a, b in flat]))
        mine = {n.key for n in refine(estimate, share=params["share"], threshold=params["threshold"]).neurons}
        theirs = {n.key for n in refined[fact.id]}
        assert jaccards[fact.id] == pytest.approx(len(mine & theirs) / len(mine | theirs) if mine | theirs else 1.0)
        differs += mine != theirs
        if mine:  # the causal check: the mean relative change with the estimator's neurons set to 0, by hand
            changes = []
            for prompt in fact.prompts():
                before = probability_by_hand(lm, prompt, fact.object)
                changes.append((probability_by_hand(lm, prompt, fact.object, sorted(mine)) - before) / before)
            assert suppress[fact.id] == pytest.approx(np.mean(changes), rel=1e-7, abs=1e-12)
            assert fact.id in random_rows
        else:
            assert fact.id not in suppress
    assert differs  # the tiny model's gxa is not IG: the comparison is not trivially 1
    assert min(rhos.values()) < 1.0
    # the overall seconds per prompt is total seconds / total prompts of the per-fact rows
    per_fact, prompts = by_fact(rows, "gxa", "seconds_per_prompt"), by_fact(rows, "gxa", "prompts")
    total = [r["value"] for r in rows if r["variant"] == "gxa" and r["metric"] == "seconds_per_prompt"
             and not r["fact_id"]]
    assert total == [pytest.approx(sum(per_fact[f] * prompts[f] for f in per_fact) / sum(prompts.values()))]
    assert summarize(rows, "gxa", "refined_jaccard").n == len(facts)


class Refusing(Estimator):
    """An estimator that refuses the model (as a model-specific one may), to check that the study skips it."""

    name = "refusing"

    def params(self):
        return {"estimator": self.name}

    def attribute(self, lm, prompts, answer=None, *, layers=None, on_prompt=None):
        raise KneuronError("refusing works on no model.")


def test_an_estimator_that_refuses_is_skipped_not_fatal(tiny_atlas):
    lm, path = tiny_atlas
    facts, params, scores, refined, kept, _ = _atlas_inputs(path)
    skipped = []
    chosen = {"refusing": Refusing(), "gxa": GradientTimesActivation()}
    rows = estimator_agreement(lm, facts[:2], scores, refined, chosen, threshold=params["threshold"],
                               share=params["share"], kept=kept,
                               on_skip=lambda label, exc: skipped.append((label, str(exc))))
    assert skipped == [("refusing", "refusing works on no model.")]
    assert {r["variant"] for r in rows} == {"gxa", "ig", "params"}
    with pytest.raises(KneuronError, match="ig-exact"):
        estimator_agreement(lm, facts[:1], scores, refined, {"ig": GradientTimesActivation()}, threshold=0.2,
                            share=0.3)


def test_choosing_and_refusing():
    params = {"steps": 7, "alphas": "midpoint", "objective": "logprob"}
    assert estimator_for("ig", params) == IntegratedGradients(7, "midpoint", "logprob")
    assert estimator_for("ig-gauss5", params) == IntegratedGradients(5, "gauss", "logprob")
    assert estimator_for("gxa", params) == GradientTimesActivation("logprob")
    assert "ig" not in default_estimators() and default_estimators()[-1] == "ig-gauss5"
    assert "gxa" in default_estimators()
    for bad, match in (("nope", "Unknown estimator"), ("ig-gaussx", "ig-gauss5"), ("ig-gauss0", "ig-gauss5")):
        with pytest.raises(KneuronError, match=match):
            estimator_for(bad, params)
    assert exact_ig_refusal({"steps": 20}) is None  # no estimator recorded: integrated gradients
    assert exact_ig_refusal({"estimator": "ig", "keep_scores": "sparse"}) is None
    assert "'gxa'" in exact_ig_refusal({"estimator": "gxa"})
    assert "screened" in exact_ig_refusal({"estimator": "ig", "screen": 4})
    assert "no score" in exact_ig_refusal({"keep_scores": "none"})


def test_every_pair_of_estimators_gets_the_same_ig_reference(tiny_atlas):
    """The reference rows (variant ig) do not depend on which estimators are compared."""
    lm, path = tiny_atlas
    facts, params, scores, refined, kept, _ = _atlas_inputs(path)
    choices = {"gxa": GradientTimesActivation(), "ig-gauss2": IntegratedGradients(2, "gauss")}
    refs = []
    for pair in combinations(choices, 1):
        rows = estimator_agreement(lm, facts[:3], scores, refined, {k: choices[k] for k in pair}, threshold=0.2,
                                   share=params["share"], kept=kept, seed=4)
        refs.append([r for r in rows if r["variant"] == "ig"])
    assert refs[0] == refs[1]


# ------------------------------------------------------------------------------------------ specificity


def test_specificity_rows_equal_the_paper_study_and_the_hand_computation(tiny_atlas):
    """``suppress_other`` of IG equals the suppress / amplify study's on the same facts; an estimator's equals the
    mean relative change by hand on the same drawn prompts of other relations; the generic measures and
    ``identical`` equal direct counts with the generic study's definition."""
    from collections import Counter

    from kneuron.studies.metrics import fact_rng
    from kneuron.studies.suppress_amplify import other_relation_prompts, suppress_amplify

    lm, path = tiny_atlas
    facts, params, scores, refined, kept, _ = _atlas_inputs(path)
    gxa = GradientTimesActivation(objective=params["objective"])
    share = 0.3
    rows = estimator_agreement(lm, facts, scores, refined, {"gxa": gxa}, threshold=params["threshold"],
                               share=params["share"], kept=kept, seed=3, other_facts=2, generic_share=share)
    paper = [r for r in suppress_amplify(lm, facts, refined, other_facts=2, seed=3)
             if r["variant"] == "kn" and r["metric"] == "suppress_other"]
    assert paper and by_fact(rows, "ig", "suppress_other") == pytest.approx(
        {r["fact_id"]: r["value"] for r in paper}, rel=1e-9, abs=1e-12)
    sets = {"ig": {f.id: {n.key for n in refined[f.id]} for f in facts},
            "gxa": {f.id: {n.key for n in refine(gxa.attribute(lm, f.prompts(), f.object), share=params["share"],
                                                  threshold=params["threshold"]).neurons} for f in facts}}
    other = by_fact(rows, "gxa", "suppress_other")
    for fact in facts:
        mine = sets["gxa"][fact.id]
        if not mine:
            assert fact.id not in other
            continue
        changes = []
        for o, p in other_relation_prompts(fact, facts, 2, fact_rng(3, fact.id)):
            prompt = o.prompts()[p]
            before = probability_by_hand(lm, prompt, o.object)
            changes.append((probability_by_hand(lm, prompt, o.object, sorted(mine)) - before) / before)
        assert other[fact.id] == pytest.approx(np.mean(changes), rel=1e-7, abs=1e-12)
    assert by_fact(rows, "gxa", "identical") == {f.id: float(sets["gxa"][f.id] == sets["ig"][f.id]) for f in facts}
    overall = {(r["variant"], r["metric"]): r["value"] for r in rows if not r["fact_id"]}
    for label, by in sets.items():
        counts = Counter(key for keys in by.values() for key in keys)
        generic = {key for key, c in counts.items() if c > share * len(facts) and c >= 2}
        assert by_fact(rows, label, "generic_fraction") == pytest.approx(
            {f: len(keys & generic) / len(keys) for f, keys in by.items() if keys})
        assert overall[label, "generic_neurons"] == len(generic)
        assert overall[label, "most_shared"] == pytest.approx(max(counts.values()) / len(facts))
    summary = {entry["estimator"]: entry for entry in agreement_summary(rows)}
    assert summary["gxa"]["identical_facts"] == sum(sets["gxa"][f.id] == sets["ig"][f.id] for f in facts)
    assert summary["gxa"]["suppress_other"] == pytest.approx(np.mean(list(other.values())))
    assert summary["ig"]["neurons"] == pytest.approx(np.mean([len(refined[f.id]) for f in facts]))


def test_the_study_pairs_each_estimator_with_exact_ig():
    from kneuron.studies.catalog.estimators import estimator_controls
    from kneuron.studies.intervals import aggregate_rows, find
    from kneuron.studies.metrics import row

    rows = [row("estimators", variant, "r", f"f{i}", "suppress_other", value)
            for i in range(6) for variant, value in (("gxa", -0.5 - 0.01 * i), ("ig", -0.1 - 0.02 * i))]
    rows += [row("estimators", "params", "", "", "seed", 0)]
    assert estimator_controls(rows) == {"gxa": "ig"}
    found = find(aggregate_rows(rows, estimator_controls(rows)), "gxa", "suppress_other")
    assert found.control == "ig" and found.n == 6 and found.p == pytest.approx(2 / 64)
    assert found.control_mean == pytest.approx(np.mean([-0.1 - 0.02 * i for i in range(6)]))
