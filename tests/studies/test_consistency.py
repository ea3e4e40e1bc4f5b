"""The consistency study (Chen et al.): per-fact Jaccard of the coarse sets and Spearman over the kept union against
slow references (sets by hand, scipy's spearmanr), the same figures from full, sparse and none atlases of the tiny
Llama, and the Otsu split against a brute force over every bipartition."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from kneuron.errors import KneuronError
from kneuron.store import Atlas, run
from kneuron.studies.consistency import (
    FactConsistency,
    between_class_variance,
    consistency_rows,
    consistency_study,
    effect_comparisons,
    fact_values,
    mean_pairwise_jaccard,
    mean_pairwise_spearman,
    otsu_split,
    score_union,
    split_comparison,
    summary_values,
)
from store.helpers import tiny_facts, tiny_model

KEEPS = ("full", "sparse", "none")


@pytest.fixture(scope="module")
def atlases(tmp_path_factory):
    """The tiny facts on the tiny Llama (48 neurons a layer, 4 steps) with each keep_scores, and their study rows."""
    torch.set_num_threads(1)
    lm = tiny_model("llama", neurons=48)
    folder = tmp_path_factory.mktemp("consistency")
    found = {}
    for keep in KEEPS:
        path = folder / f"{keep}.sqlite"
        run(lm, tiny_facts(), path, steps=4, known_only=False, progress=False, keep_scores=keep, share=0.3)
        with Atlas.open(path) as atlas:
            found[keep] = (path, consistency_study(atlas))
    return found


# ------------------------------------------------------------------------------------------- slow references


def coarse_by_hand(matrix: torch.Tensor, threshold: float = 0.2) -> set[tuple[int, int]]:
    top = float(matrix.max())
    return {(layer, i) for layer in range(matrix.shape[0]) for i in range(matrix.shape[1])
            if top > 0 and float(matrix[layer, i]) > threshold * top}


def jaccard_by_hand(sets: list[set]) -> float:
    values = []
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            union = sets[i] | sets[j]
            if union:
                values.append(len(sets[i] & sets[j]) / len(union))
    return sum(values) / len(values) if values else math.nan


def union_by_hand(matrices: list[np.ndarray], share: float = 0.05) -> list[int]:
    kept = []
    flats = [m.reshape(-1) for m in matrices]
    for k in range(flats[0].size):
        if any(abs(f[k]) >= share * f.max() if f.max() > 0 else True for f in flats):
            kept.append(k)
    return kept


def spearman_by_scipy(vectors: list[np.ndarray]) -> float:
    values = []
    for a, b in itertools.combinations(vectors, 2):
        rho = spearmanr(a, b).statistic
        if math.isfinite(rho):
            values.append(rho)
    return float(np.mean(values)) if values else math.nan


# ------------------------------------------------------------------------------------------- the two scores


def test_jaccard_and_rank_correlation_equal_the_slow_references(atlases):
    path, rows = atlases["full"]
    stored = fact_values(rows)
    assert set(stored) == {fact.id for fact in tiny_facts()}
    with Atlas.open(path, read_only=True) as atlas:
        for fact in tiny_facts():
            bag = atlas.prompt_scores(fact.id)
            matrices = [s.scores.double().numpy() for s in bag]
            # the stored coarse sets are the by-hand ones at the atlas's threshold, so the Jaccard is the sets'
            sets = [coarse_by_hand(s.scores) for s in bag]
            assert sets == [{n.key for n in c} for c in atlas.knowledge_neurons(fact.id).coarse]
            kept = union_by_hand(matrices)
            assert 0 < len(kept) < matrices[0].size
            values = stored[fact.id]
            assert values["prompts"] == len(bag) == 3
            assert values["jaccard"] == pytest.approx(jaccard_by_hand(sets), abs=1e-12)
            assert values["rank_correlation"] == pytest.approx(
                spearman_by_scipy([m.reshape(-1)[kept] for m in matrices]), abs=1e-9)
            assert values["rank_correlation_all"] == pytest.approx(
                spearman_by_scipy([m.reshape(-1) for m in matrices]), abs=1e-9)
    # not all facts alike: the scores vary, so the split below has something to split
    assert len({round(v["jaccard"], 9) for v in stored.values()}) > 2


def test_full_sparse_and_none_give_the_same_jaccard_and_split(atlases):
    full, sparse, none = (fact_values(atlases[keep][1]) for keep in KEEPS)
    for fact_id, values in full.items():
        assert sparse[fact_id]["jaccard"] == values["jaccard"] == none[fact_id]["jaccard"]
        assert sparse[fact_id]["consistent"] == values["consistent"] == none[fact_id]["consistent"]
        # inside the kept union a sparse atlas holds every prompt's true score: the same correlation
        assert sparse[fact_id]["rank_correlation"] == pytest.approx(values["rank_correlation"], abs=1e-12)
        assert math.isnan(none[fact_id]["rank_correlation"])
        assert "rank_correlation_all" not in sparse[fact_id] and "rank_correlation_all" not in none[fact_id]
    assert summary_values(atlases["sparse"][1], "otsu") == summary_values(atlases["full"][1], "otsu")


def test_the_union_is_what_a_sparse_atlas_keeps(atlases):
    with Atlas.open(atlases["full"][0], read_only=True) as full, \
            Atlas.open(atlases["sparse"][0], read_only=True) as sparse:
        for fact in tiny_facts():
            union = score_union([s.scores.numpy() for s in full.prompt_scores(fact.id)])
            for index, _, _ in sparse.prompt_sparse(fact.id):
                assert index.tolist() == union.tolist()


def test_edge_cases_of_the_scores():
    assert math.isnan(mean_pairwise_jaccard([[(0, 1)]]))  # one prompt: no pair
    assert math.isnan(mean_pairwise_jaccard([[], []]))  # two empty sets say nothing
    # the empty pair is left out, the others count: {a} vs {} is 0, {a} vs {a} is 1, {} vs {} left out
    assert mean_pairwise_jaccard([[(0, 1)], [(0, 1)], [], []]) == pytest.approx((1 + 0 + 0 + 0 + 0) / 5)
    assert mean_pairwise_jaccard([[(0, 1), (1, 2)], [(1, 2), (2, 3)]]) == pytest.approx(1 / 3)
    assert math.isnan(mean_pairwise_spearman([np.arange(4.0)]))
    # a constant prompt has no ranks: its pairs are left out
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 3.0, 1.0, 2.0])
    assert mean_pairwise_spearman([a, b, np.ones(4)]) == pytest.approx(spearmanr(a, b).statistic)
    rng = np.random.default_rng(3)
    vectors = [rng.integers(0, 4, 30).astype(float) for _ in range(4)]  # many ties
    assert mean_pairwise_spearman(vectors) == pytest.approx(spearman_by_scipy(vectors), abs=1e-12)
    # a prompt whose maximum is not positive keeps everything (the sparse rule)
    assert score_union([np.array([-1.0, -2.0, 0.0])]).tolist() == [0, 1, 2]
    assert score_union([np.array([1.0, 0.01, -0.5]), np.array([0.0, 0.2, 0.0])]).tolist() == [0, 1, 2]
    assert score_union([np.array([1.0, 0.01, 0.04])]).tolist() == [0]


# ------------------------------------------------------------------------------------------- Otsu


def brute_force(values: list[float]) -> tuple[float, frozenset[int]]:
    """The largest between-class variance over every bipartition of ``values`` (indices of the upper class)."""
    best, chosen = -1.0, frozenset()
    n = len(values)
    for mask in range(1, 2 ** n - 1):
        high = frozenset(i for i in range(n) if mask >> i & 1)
        variance = between_class_variance([values[i] for i in range(n) if i not in high],
                                          [values[i] for i in high])
        if variance > best + 1e-15:
            best, chosen = variance, high
    return best, chosen


@pytest.mark.parametrize("n", range(2, 10))
def test_otsu_is_the_best_of_every_bipartition(n):
    rng = np.random.default_rng(n)
    for _ in range(5):
        values = rng.random(n).tolist()
        split = otsu_split(values)
        best, side = brute_force(values)
        # the variance is symmetric in the two classes: the upper class is the side of larger mean
        other = frozenset(range(n)) - side
        high = side if np.mean([values[i] for i in side]) > np.mean([values[i] for i in other]) else other
        assert split.n == n and split.between_variance == pytest.approx(best, rel=1e-12)
        assert frozenset(i for i, v in enumerate(values) if split.consistent(v) == 1.0) == high
        # the threshold is the midpoint of the two values it separates
        assert split.threshold == pytest.approx((max(v for i, v in enumerate(values) if i not in high)
                                                 + min(values[i] for i in high)) / 2)


def test_otsu_with_ties_matches_a_brute_force_over_thresholds():
    rng = np.random.default_rng(7)
    for _ in range(30):
        values = rng.integers(0, 4, rng.integers(3, 9)).astype(float).tolist()
        split = otsu_split(values)
        distinct = sorted(set(values))
        if len(distinct) < 2:
            assert math.isnan(split.threshold)
            continue
        cuts = [(a + b) / 2 for a, b in itertools.pairwise(distinct)]
        variances = [between_class_variance([v for v in values if v <= t], [v for v in values if v > t])
                     for t in cuts]
        first_best = cuts[int(np.argmax(variances))]  # ties of the variance: the lowest threshold
        assert split.threshold == pytest.approx(first_best)
        assert split.between_variance == pytest.approx(max(variances))


def test_otsu_edge_cases():
    for values in ([], [0.4], [math.nan, 0.4, math.inf]):
        split = otsu_split(values)
        assert math.isnan(split.threshold) and split.n == 1 - (values == []) and "nothing to split" in split.reason
    split = otsu_split([0.3, 0.3, 0.3])
    assert math.isnan(split.threshold) and split.between_variance == 0 and "all 3 scores are equal" in split.reason
    assert math.isnan(split.consistent(0.3))
    split = otsu_split([0.2, math.nan, 0.6])
    assert split.threshold == pytest.approx(0.4) and split.n == 2
    assert split.consistent(0.6) == 1.0 and split.consistent(0.2) == 0.0 and split.consistent(0.4) == 0.0
    assert math.isnan(split.consistent(math.nan))


# ------------------------------------------------------------------------------------------- rows


def entries() -> list[FactConsistency]:
    return [FactConsistency("a:1", "a", 0.1, 0.2, 4), FactConsistency("a:2", "a", 0.8, 0.7, 4),
            FactConsistency("b:1", "b", 0.7, 0.5, 5), FactConsistency("b:2", "b", math.nan, math.nan, 1),
            FactConsistency("b:3", "b", 0.15, 0.1, 3)]


def test_rows_summaries_and_the_split():
    rows = consistency_rows(entries())
    assert {r["study"] for r in rows} == {"consistency"}
    facts = fact_values(rows)
    assert [facts[f]["consistent"] for f in ("a:1", "a:2", "b:1", "b:3")] == [0.0, 1.0, 1.0, 0.0]
    assert math.isnan(facts["b:2"]["consistent"]) and facts["b:2"]["prompts"] == 1
    otsu = summary_values(rows, "otsu")
    assert otsu["threshold"] == pytest.approx((0.15 + 0.7) / 2) and otsu["facts"] == 4
    overall = summary_values(rows)
    # Jaccard 0.1, 0.8, 0.7, 0.15 against rank correlation 0.2, 0.7, 0.5, 0.1: ranks 1 4 3 2 and 2 4 3 1
    assert overall.pop("score_agreement") == pytest.approx(spearmanr([1, 4, 3, 2], [2, 4, 3, 1]).statistic)
    assert overall == pytest.approx({"facts": 5, "jaccard": np.mean([0.1, 0.8, 0.7, 0.15]),
                                     "rank_correlation": np.mean([0.2, 0.7, 0.5, 0.1]), "consistent": 2,
                                     "inconsistent": 2, "inconsistent_share": 0.5})
    b = summary_values(rows, "relation", "b")
    assert b["facts"] == 3 and b["inconsistent"] == 1 and b["inconsistent_share"] == pytest.approx(0.5)
    assert summary_values(rows, "relation", "a")["jaccard"] == pytest.approx(0.45)
    assert summary_values(rows, "params")["union_share"] == 0.05


def test_split_comparison_and_effects():
    rows = consistency_rows(entries())
    suppress = [{"variant": "kn", "relation": "a", "fact_id": f, "metric": "suppress", "value": v}
                for f, v in (("a:1", -0.1), ("a:2", -0.5), ("b:1", -0.3), ("b:2", -0.9), ("b:3", math.nan))]
    suppress.append({"variant": "kn", "relation": "", "fact_id": "", "metric": "suppress", "value": -1.0})
    suppress.append({"variant": "random", "relation": "a", "fact_id": "a:1", "metric": "suppress", "value": 9.0})
    suppress.append({"variant": "kn_no_generic", "relation": "a", "fact_id": "a:2", "metric": "amplify", "value": 0.5})
    comparison = split_comparison(rows, suppress, "kn", "suppress")
    assert comparison["consistent"] == (pytest.approx(-0.4), 2)  # b:2 is not classed, b:3 NaN
    assert comparison["inconsistent"] == (pytest.approx(-0.1), 1)
    editing = [{"variant": variant, "relation": "a", "fact_id": f, "metric": "success", "value": v}
               for variant in ("kn", "kn_signed", "random") for f, v in (("a:1", 0.0), ("a:2", 1.0))]
    found = effect_comparisons(rows, {"suppress_amplify": suppress, "editing": editing})
    assert [(study, variant, label.split(":")[0]) for study, variant, label, _ in found] == [
        ("suppress_amplify", "kn", "suppress KN"), ("suppress_amplify", "kn_no_generic", "amplify KN"),
        ("editing", "kn", "edit success (share of facts)"),
        ("editing", "kn_signed", "edit success (share of facts)")]
    assert found[1][3] == {"consistent": (0.5, 1), "inconsistent": (pytest.approx(math.nan, nan_ok=True), 0)}
    assert found[2][3] == {"consistent": (1.0, 1), "inconsistent": (0.0, 1)}
    assert effect_comparisons(rows, {}) == []


def test_an_atlas_without_done_facts_is_refused_in_one_line(tmp_path):
    path = tmp_path / "none_done.sqlite"
    run(tiny_model("llama"), tiny_facts()[:2], path, steps=2, known_only=True, progress=False)
    with Atlas.open(path) as atlas:
        assert not atlas.facts()
        with pytest.raises(KneuronError, match="has no computed facts yet") as caught:
            consistency_study(atlas)
        assert "\n" not in str(caught.value)
        assert atlas.results("consistency") == []
