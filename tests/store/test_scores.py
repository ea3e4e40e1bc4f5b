"""keep_scores: sparse atlases keep every score >= 0.05 x the prompt's max (and where another prompt of the fact
has one; with the activations there), enough to recompute coarse neurons at any threshold >= 0.05 and refinement
at any share exactly; none keeps no matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kneuron.attribution import coarse_neurons, refine
from kneuron.errors import KneuronError
from kneuron.store import Atlas, run
from kneuron.store.scores import SPARSE_THRESHOLD
from store.helpers import RUN_ARGS, dump, tiny_facts, tiny_model


@pytest.fixture(scope="module")
def atlases(tmp_path_factory):
    lm = tiny_model("llama", neurons=48)
    folder = tmp_path_factory.mktemp("keep")
    paths = {}
    for keep in ("full", "sparse", "none"):
        paths[keep] = folder / f"{keep}.sqlite"
        run(lm, tiny_facts(), paths[keep], **{**RUN_ARGS, "keep_scores": keep})
    return paths


def test_sparse_keeps_exactly_the_large_scores(atlases):
    with Atlas.open(atlases["full"], read_only=True) as full, Atlas.open(atlases["sparse"], read_only=True) as sparse:
        assert sparse.params["keep_scores"] == "sparse" and sparse.params["sparse_threshold"] == SPARSE_THRESHOLD
        for fact in tiny_facts():
            dense = sparse.prompt_scores(fact.id)
            entries = sparse.prompt_sparse(fact.id)
            bag = full.prompt_scores(fact.id)
            union = np.zeros(bag[0].scores.numel(), dtype=bool)
            for whole in bag:
                flat = whole.scores.flatten().numpy()
                union |= np.abs(flat) >= SPARSE_THRESHOLD * flat.max()
            for whole, got, (index, values, acts) in zip(bag, dense, entries, strict=True):
                flat = whole.scores.flatten().numpy()
                own = np.abs(flat) >= SPARSE_THRESHOLD * flat.max()
                keep = union
                assert set(np.flatnonzero(own)) <= set(index.tolist())
                assert index.tolist() == np.flatnonzero(keep).tolist() and 0 < keep.sum() < flat.size
                assert values.tobytes() == flat[keep].tobytes()
                assert acts.tobytes() == whole.activations.flatten().numpy()[keep].tobytes()
                expected = torch.where(torch.from_numpy(keep).reshape(whole.scores.shape), whole.scores, 0.0)
                assert torch.equal(got.scores, expected)
                assert torch.equal(got.baseline, whole.baseline) and got.probability == whole.probability


def test_coarse_and_refined_recomputed_from_sparse_equal_the_stored(atlases):
    with Atlas.open(atlases["sparse"], read_only=True) as sparse, Atlas.open(atlases["full"], read_only=True) as full:
        for fact in tiny_facts():
            bag = sparse.prompt_scores(fact.id)
            stored = sparse.knowledge_neurons(fact.id)
            again = refine(bag, share="adaptive", threshold=0.2, fact=fact)
            assert again.neurons == stored.neurons and again.coarse == stored.coarse
            assert [n.score for n in again.neurons] == [n.score for n in stored.neurons]
            whole = full.prompt_scores(fact.id)
            for threshold in (SPARSE_THRESHOLD, 0.1, 0.3, 0.9):
                for mine, theirs in zip(bag, whole, strict=True):
                    assert coarse_neurons(mine, threshold) == coarse_neurons(theirs, threshold)
            for share in (0.0, 0.3, 0.6):
                mine, theirs = refine(bag, share=share).neurons, refine(whole, share=share).neurons
                assert mine == theirs and [n.score for n in mine] == [n.score for n in theirs]


def test_all_three_keep_the_same_neurons_and_sizes_shrink(atlases):
    dumps = {keep: dump(path) for keep, path in atlases.items()}
    assert dumps["full"]["neurons"] == dumps["sparse"]["neurons"] == dumps["none"]["neurons"]
    assert dumps["full"]["facts"] == dumps["sparse"]["facts"] == dumps["none"]["facts"]
    sizes = {}
    for keep, path in atlases.items():
        with Atlas.open(path, read_only=True) as atlas:
            sizes[keep] = atlas.query("SELECT sum(length(scores) + length(activations)) AS n FROM prompts")[0]["n"]
    with Atlas.open(atlases["sparse"], read_only=True) as atlas:
        kept = sum(len(index) for fact in tiny_facts() for index, _, _ in atlas.prompt_sparse(fact.id))
        cells = 30 * atlas.meta["n_layers"] * atlas.meta["n_neurons"]  # 30 prompts
        (row,) = atlas.query("SELECT DISTINCT dtype FROM prompts")
    width = {"float32": 4, "float64": 8}[row["dtype"]]
    assert sizes["full"] == 2 * width * cells and sizes["none"] == 0  # scores and activations
    assert 0 < kept < cells and sizes["sparse"] == (4 + 2 * width) * kept  # int32 index, score, activation
    with Atlas.open(atlases["none"], read_only=True) as atlas:
        with pytest.raises(KneuronError, match="keeps no score matrices"):
            atlas.prompt_scores("capital:France")
        with pytest.raises(KneuronError, match="not sparse ones"):
            atlas.prompt_sparse("capital:France")


def test_unknown_keep_is_refused(tmp_path):
    with pytest.raises(KneuronError, match="Unknown keep_scores 'some'"):
        run(tiny_model("llama"), tiny_facts()[:1], tmp_path / "x.sqlite", **{**RUN_ARGS, "keep_scores": "some"})
    assert not (tmp_path / "x.sqlite").exists()
