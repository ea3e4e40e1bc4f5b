"""Fixtures of the ``kneuron serve`` tests: a tiny atlas with studies (made once per session), its model, and the
app over it."""

from __future__ import annotations

import shutil

import pytest

from kneuron.store import Atlas, run
from store.helpers import tiny_facts
from tiny_models import tiny_lm

FAMILY = "llama"


def atlas_model():
    """The tiny model the serve atlases are made with (the same weights at every call)."""
    return tiny_lm(FAMILY)


def make_atlas(path, keep_scores: str = "full", studies: bool = True):
    """A tiny atlas of the ten tiny facts (3 steps, share 0.3), with the paper's studies (rows and aggregates, as
    ``kneuron study`` stores them) and the value-slot vocabulary table (no vocabulary results rows: the tables
    are what the pages read)."""
    from kneuron.interventions.vocabulary import token_text
    from kneuron.store.vocabulary import write_vocabulary
    from kneuron.studies.generic import generic_neurons
    from kneuron.studies.intervals import aggregate_rows
    from kneuron.studies.layer_distribution import top_third_aggregates
    from kneuron.studies.registry import study_named
    from kneuron.studies.studies import run_studies
    from kneuron.studies.vocabulary import study_vocabularies

    lm = atlas_model()
    run(lm, tiny_facts(), path, steps=3, known_only=False, progress=False, share=0.3, keep_scores=keep_scores)
    if studies:
        with Atlas.open(path) as atlas:
            facts = atlas.facts()
            neurons = atlas.all_refined()
            baseline = {f.id: atlas.baseline_neurons(f.id) for f in facts}
            found = run_studies(lm, facts, neurons, baseline, seed=3, other_facts=2,
                                studies=("suppress_amplify", "layers", "discrimination"))
            for study, rows in found.items():
                aggregates = (top_third_aggregates(neurons, lm.n_layers, baseline,
                                                   relations={f.id: f.relation for f in facts},
                                                   generic=generic_neurons(neurons, share=0.1))
                              if study == "layers" else aggregate_rows(rows, study_named(study).controls))
                atlas.write_results(study, rows, facts=[f.id for f in facts], aggregates=aggregates)
            vocabularies = study_vocabularies(lm, facts, neurons)
            write_vocabulary(atlas, vocabularies, lambda token: token_text(lm, token))
    return path


@pytest.fixture(scope="session")
def serve_atlas(tmp_path_factory):
    """A full-score tiny atlas with studies; read-only: copy it (``atlas_copy``) to change it."""
    return make_atlas(tmp_path_factory.mktemp("serve") / "tiny.sqlite")


@pytest.fixture(scope="session")
def sparse_atlas(tmp_path_factory):
    return make_atlas(tmp_path_factory.mktemp("serve-sparse") / "sparse.sqlite", keep_scores="sparse",
                      studies=False)


@pytest.fixture
def atlas_copy(serve_atlas, tmp_path):
    target = tmp_path / "copy.sqlite"
    shutil.copyfile(serve_atlas, target)
    return target


@pytest.fixture
def client(serve_atlas):
    from fastapi.testclient import TestClient

    from kneuron.serve.app import create_app

    with TestClient(create_app(serve_atlas), base_url="http://localhost") as test_client:
        yield test_client


@pytest.fixture(scope="module")
def live_server(serve_atlas):
    """The app over the tiny atlas with its tiny model loaded for probes (``server.lm``, ``server.queue``), served
    on a free port of 127.0.0.1."""
    from kneuron.serve.app import create_app
    from kneuron.serve.jobs import ProbeQueue
    from kneuron.serve.server import RunningServer

    lm = atlas_model()
    with ProbeQueue(lm, max_pending=32) as queue, \
            RunningServer(create_app(serve_atlas, model=lm, queue=queue)) as server:
        server.lm, server.queue = lm, queue
        yield server
