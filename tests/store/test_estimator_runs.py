"""Runs with another estimator on tiny models: a gradient x activation run and a screened run store exactly what
the estimator and refine give directly, an atlas made before estimators (params without "estimator") resumes as
exact integrated gradients, and a run with another estimator or screen than its atlas's is refused."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from kneuron.attribution import (
    GradientTimesActivation,
    IntegratedGradients,
    ScreenedIntegratedGradients,
    activation_baseline,
    find_knowledge_neurons,
    refine,
)
from kneuron.attribution.estimators import Estimator
from kneuron.attribution.knowledge import layer_list
from kneuron.errors import KneuronError
from kneuron.facts import encode
from kneuron.store import Atlas, run
from kneuron.store.atlas import from_blob
from kneuron.store.runs import run_params
from store.helpers import RUN_ARGS, dump, tiny_facts, tiny_model


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


def expected_fact(bag, fact, made_by, **extra):
    """What a run should store for ``fact``: refine of the estimator's bag, params with the estimator's."""
    kn = refine(bag, fact=fact)
    kn.params.update(made_by.params(), answer=fact.object, **extra)
    return kn


def assert_stored(atlas, fact, expected, bag):
    kn = atlas.knowledge_neurons(fact.id)
    assert kn.neurons == expected.neurons and [n.score for n in kn.neurons] == [n.score for n in expected.neurons]
    assert kn.coarse == expected.coarse
    assert [[n.score for n in c] for c in kn.coarse] == [[n.score for n in c] for c in expected.coarse]
    assert kn.params == expected.params
    assert atlas.baseline_neurons(fact.id) == activation_baseline(bag, len(expected.neurons))
    stored = atlas.prompt_scores(fact.id)
    assert len(stored) == len(bag)
    for got, want in zip(stored, bag, strict=True):
        assert torch.equal(got.scores, want.scores) and torch.equal(got.activations, want.activations)
        assert got.probability == want.probability and got.position == want.position
        assert (got.estimator, got.steps, got.objective) == (want.estimator, want.steps, want.objective)


def test_a_gxa_run_stores_what_gxa_and_refine_give(lm, tmp_path):
    path = tmp_path / "gxa.sqlite"
    facts = tiny_facts()[:5]
    summary = run(lm, facts, path, estimator="gxa", **RUN_ARGS)
    assert summary.computed == 5
    gxa = GradientTimesActivation()
    with Atlas.open(path, read_only=True) as atlas:
        params = atlas.meta["params"]
        assert params["estimator"] == "gxa" and params["objective"] == "prob"
        assert "steps" not in params and "alphas" not in params and "screen" not in params
        # the run attributes each chunk's prompts in one call, batched together (chunks of RUN_ARGS' 3 facts)
        size = RUN_ARGS["chunk_facts"]
        everything = [scores for start in range(0, len(facts), size) for scores in gxa.attribute(
            lm, [encode(lm, prompt, fact.object) for fact in facts[start:start + size] for prompt in fact.prompts()])]
        for fact in facts:
            bag, everything = everything[:len(fact.prompts())], everything[len(fact.prompts()):]
            for scores in bag:
                scores.answer = fact.object
            expected = expected_fact(bag, fact, gxa)
            assert expected.params["estimator"] == "gxa" and expected.params["steps"] == 1
            assert_stored(atlas, fact, expected, bag)
            assert all(s.estimator == "gxa" for s in atlas.prompt_scores(fact.id))
            assert all(torch.isnan(s.baseline).all() for s in atlas.prompt_scores(fact.id))  # gxa has no baseline
            # nor a completeness gap: None in the results, NaN in the atlas's NOT NULL column as always
            assert all(s.completeness_gap is None for s in atlas.prompt_scores(fact.id))
            assert all(torch.isnan(from_blob(row["completeness_gap"], "float64", (row["layers"],))).all()
                       for row in atlas._rows("SELECT * FROM prompts WHERE fact_id = ?", [fact.id]))
            api = find_knowledge_neurons(lm, fact, estimator="gxa")
            assert api.neurons == expected.neurons and api.params == expected.params
    # the IG atlas of the same facts is another atlas: its neurons differ for at least one fact
    ig_path = tmp_path / "ig.sqlite"
    run(lm, facts, ig_path, **RUN_ARGS)
    with Atlas.open(ig_path, read_only=True) as ig, Atlas.open(path, read_only=True) as gx:
        assert any(not torch.equal(a.scores, b.scores) for f in facts
                   for a, b in zip(ig.prompt_scores(f.id), gx.prompt_scores(f.id), strict=True))


def test_a_screened_run_stores_what_screened_ig_gives(lm, tmp_path):
    path = tmp_path / "screened.sqlite"
    facts = tiny_facts()[:4]
    run(lm, facts, path, screen=2, **RUN_ARGS)
    with Atlas.open(path, read_only=True) as atlas:
        params = atlas.meta["params"]
        assert (params["estimator"], params["steps"], params["screen"], params["screen_estimator"]) == (
            "ig", 6, 2, "gxa")
        chosen_sets = set()
        for fact in facts:
            screened = ScreenedIntegratedGradients(2, IntegratedGradients(steps=6))
            bag = screened.attribute(lm, fact.prompts(), fact.object)
            chosen = bag[0].screen_layers
            assert len(chosen) == 2
            chosen_sets.add(chosen)
            expected = expected_fact(bag, fact, screened, screen_layers=layer_list(chosen))
            assert_stored(atlas, fact, expected, bag)
            assert atlas.knowledge_neurons(fact.id).params["screen_layers"] == ",".join(map(str, chosen))
            for scores in atlas.prompt_scores(fact.id):  # the layers left out score 0, the chosen ones do not
                for layer in range(lm.n_layers):
                    assert bool(scores.scores[layer].any()) == (layer in chosen)
            api = find_knowledge_neurons(lm, fact, estimator=ScreenedIntegratedGradients(2, IntegratedGradients(6)))
            assert api.neurons == expected.neurons and api.params == expected.params
    # a run with screen=2 and the same estimator as an object writes the same atlas
    again = tmp_path / "again.sqlite"
    run(lm, facts, again, estimator=ScreenedIntegratedGradients(2, IntegratedGradients(steps=6)),
        **{k: v for k, v in RUN_ARGS.items() if k != "steps"})
    assert dump(again) == dump(path)


def _make_old_style(path) -> None:
    """Strip what estimators added from an atlas's params (meta and facts): an atlas made before them."""
    db = sqlite3.connect(path)
    with db:
        meta = json.loads(db.execute("SELECT value FROM meta WHERE key = 'params'").fetchone()[0])
        del meta["estimator"]
        db.execute("UPDATE meta SET value = ? WHERE key = 'params'", (json.dumps(meta),))
        for fact_id, params in db.execute("SELECT id, params FROM facts WHERE params IS NOT NULL").fetchall():
            loaded = json.loads(params)
            del loaded["estimator"]
            db.execute("UPDATE facts SET params = ? WHERE id = ?", (json.dumps(loaded, sort_keys=True), fact_id))
    db.close()


def test_an_atlas_made_before_estimators_resumes_as_exact_ig(lm, tmp_path):
    reference = tmp_path / "reference.sqlite"
    run(lm, tiny_facts(), reference, **RUN_ARGS)
    old = tmp_path / "old.sqlite"
    run(lm, tiny_facts()[:6], old, **RUN_ARGS)  # two whole chunks of 3
    _make_old_style(old)
    with Atlas.open(old, read_only=True) as atlas:
        assert "estimator" not in atlas.meta["params"]
        assert atlas.prompt_scores(tiny_facts()[0].id)[0].estimator == "ig"
    with pytest.raises(KneuronError, match=r"estimator: atlas 'ig', this run 'gxa'"):
        run(lm, tiny_facts(), old, estimator="gxa", **RUN_ARGS)
    summary = run(lm, tiny_facts(), old, **RUN_ARGS)  # not refused, and computes the 4 facts left
    assert (summary.computed, summary.already_done) == (4, 6)
    want, got = dump(reference), dump(old)
    assert got["prompts"] == want["prompts"] and got["neurons"] == want["neurons"]  # score BLOBs byte for byte
    with Atlas.open(old, read_only=True) as atlas:
        assert [atlas.knowledge_neurons(f.id).params.get("estimator") for f in tiny_facts()] == [None] * 6 + ["ig"] * 4


def test_another_estimator_or_screen_is_refused(lm, tmp_path):
    ig = tmp_path / "ig.sqlite"
    run(lm, tiny_facts()[:1], ig, **RUN_ARGS)
    before = dump(ig)
    with pytest.raises(KneuronError, match=r"estimator: atlas 'ig', this run 'gxa'") as refused:
        run(lm, tiny_facts()[:2], ig, estimator="gxa", **RUN_ARGS)
    assert "holds a run of" in str(refused.value).splitlines()[0]
    with pytest.raises(KneuronError, match=r"screen: atlas None, this run 2; screen_estimator: atlas None, this run "
                                           r"'gxa'"):
        run(lm, tiny_facts()[:2], ig, screen=2, **RUN_ARGS)
    assert dump(ig) == before
    gxa = tmp_path / "gxa.sqlite"
    run(lm, tiny_facts()[:1], gxa, estimator="gxa", **RUN_ARGS)
    with pytest.raises(KneuronError, match=r"estimator: atlas 'gxa', this run 'ig'; steps: atlas None, this run 6"):
        run(lm, tiny_facts()[:2], gxa, **RUN_ARGS)
    screened = tmp_path / "screened.sqlite"
    run(lm, tiny_facts()[:1], screened, screen=1, **RUN_ARGS)
    with pytest.raises(KneuronError, match=r"screen: atlas 1, this run 2"):
        run(lm, tiny_facts()[:2], screened, screen=2, **RUN_ARGS)
    assert run(lm, tiny_facts()[:2], screened, screen=1, **RUN_ARGS).computed == 1  # the same screen continues


def test_gauss_alphas_run_equals_the_library(lm, tmp_path):
    path = tmp_path / "gauss.sqlite"
    fact = tiny_facts()[0]
    run(lm, [fact], path, alphas="gauss", **{**RUN_ARGS, "steps": 4})
    expected = find_knowledge_neurons(lm, fact, steps=4, alphas="gauss")
    with Atlas.open(path, read_only=True) as atlas:
        assert atlas.meta["params"]["alphas"] == "gauss"
        kn = atlas.knowledge_neurons(fact.id)
        assert kn.neurons == expected.neurons and kn.params == expected.params
        for got, want in zip(atlas.prompt_scores(fact.id), expected.scores, strict=True):
            assert torch.equal(got.scores, want.scores) and got.alphas == "gauss"


class Unregistered(Estimator):
    name = "mine"

    def params(self):
        return {"estimator": self.name}

    def attribute(self, lm, prompts, answer=None, *, layers=None, on_prompt=None):
        raise AssertionError("never called")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"estimator": "nope"}, r"Unknown estimator 'nope': use 'ig', 'gxa'"),
    ({"estimator": "gxa", "screen": 2}, r"needs the 'ig' estimator, not 'gxa'"),
    ({"screen": 0}, r"screen must be at least 1; got 0"),
    ({"estimator": Unregistered()}, r"Unknown estimator 'mine'"),
    ({"estimator": 3}, r"estimator must be a name"),
    ({"alphas": "simpson"}, r"Unknown alpha rule 'simpson'"),
])
def test_bad_estimator_settings_are_one_line_errors(kwargs, message, tmp_path):
    base = dict(steps=6, threshold=0.2, share="adaptive", objective="prob", alphas="right", known_only=False, top=10,
                min_share=0.5)
    with pytest.raises(KneuronError, match=message) as refused:
        run_params(**{**base, **kwargs})
    assert "\n" not in str(refused.value)
