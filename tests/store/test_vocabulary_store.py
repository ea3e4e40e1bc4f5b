"""The atlas's vocabulary table: absent until the study writes it, a round trip of what the study found, replaced by
each write, an atlas that stays an atlas, and damaged token lists refused in one line."""

from __future__ import annotations

import sqlite3

import pytest

from kneuron.errors import KneuronError
from kneuron.interventions.vocabulary import token_text
from kneuron.store import Atlas, run
from kneuron.store.files import probe
from kneuron.store.vocabulary import has_vocabulary, read_vocabulary, write_vocabulary
from kneuron.studies.vocabulary import study_vocabularies
from studies.conftest import tiny_facts
from tiny_models import tiny_lm


@pytest.fixture
def studied(tmp_path):
    """(atlas path, model, what the study found) on the tiny Llama."""
    path = tmp_path / "tiny.sqlite"
    lm = tiny_lm("llama")
    run(lm, tiny_facts(), path, steps=3, known_only=False, progress=False, share=0.3)
    with Atlas.open(path, read_only=True) as atlas, atlas.snapshot():
        facts, neurons = atlas.facts(), atlas.all_refined()
    return path, lm, study_vocabularies(lm, facts, neurons, seed=2, top=4)


def test_round_trip(studied):
    path, lm, found = studied
    with Atlas.open(path, read_only=True) as atlas:
        assert not has_vocabulary(atlas) and read_vocabulary(atlas) == []
    with Atlas.open(path) as atlas:
        written = write_vocabulary(atlas, found, lambda token: token_text(lm, token))
    assert written == sum(len(f.knowledge) for f in found) > 0
    assert probe(path) == "atlas"  # the extra table does not make it a foreign file
    with Atlas.open(path, read_only=True) as atlas, atlas.snapshot():
        assert has_vocabulary(atlas)
        stored = read_vocabulary(atlas)
        order = [f.id for f in atlas.facts()]
        one = read_vocabulary(atlas, found[0].fact.id)
    expected = [(f, idx, v) for f in found for idx, v in enumerate(f.knowledge)]
    assert len(stored) == len(expected)
    assert [e["fact_id"] for e in stored] == sorted((f.fact.id for f, _, _ in expected), key=order.index)
    by_key = {(e["fact_id"], e["layer"], e["neuron"]): e for e in stored}
    for fact_vocabulary, idx, v in expected:
        entry = by_key[fact_vocabulary.fact.id, v.layer, v.index]
        assert entry["idx"] == idx and entry["sign"] == v.sign
        assert entry["activation"] == pytest.approx(fact_vocabulary.activations[v.key], rel=1e-12)
        assert entry["answer_id"] == fact_vocabulary.answer_id
        assert entry["answer_token"] == token_text(lm, fact_vocabulary.answer_id)
        assert (entry["answer_rank"], entry["answer_suppressed_rank"]) == (v.answer_rank, v.answer_suppressed_rank)
        assert entry["answer_logit"] == pytest.approx(v.answer_logit, rel=1e-12)
        assert [(t, text) for t, text, _ in entry["promoted"]] == [(t, token_text(lm, t)) for t, _ in v.promoted]
        assert [x for _, _, x in entry["promoted"]] == pytest.approx([x for _, x in v.promoted], abs=1e-6)
        assert [t for t, _, _ in entry["suppressed"]] == [t for t, _ in v.suppressed]
    assert one == [e for e in stored if e["fact_id"] == found[0].fact.id]


def test_a_write_replaces_every_row(studied):
    path, lm, found = studied
    with Atlas.open(path) as atlas:
        write_vocabulary(atlas, found, lambda token: token_text(lm, token))
        write_vocabulary(atlas, found[:1], lambda token: token_text(lm, token))
        with atlas.snapshot():
            assert {e["fact_id"] for e in read_vocabulary(atlas)} == {found[0].fact.id}
        write_vocabulary(atlas, [], str)
        with atlas.snapshot():
            assert has_vocabulary(atlas) and read_vocabulary(atlas) == []


def test_damaged_token_lists_are_one_error(studied):
    path, lm, found = studied
    with Atlas.open(path) as atlas:
        write_vocabulary(atlas, found, lambda token: token_text(lm, token))
    db = sqlite3.connect(path)
    db.execute("UPDATE vocabulary SET promoted = '[[1, 2' WHERE idx = 0")
    db.commit()
    db.close()
    with Atlas.open(path, read_only=True) as atlas, pytest.raises(KneuronError, match="is damaged"):
        read_vocabulary(atlas)
