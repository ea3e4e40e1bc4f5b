"""``kneuron serve`` on the embedded SmolLM2-135M: an atlas of one fact it knows, its pages, and a live probe whose
"as is" probability is the one the run stored; the model's weights are the same afterwards."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from kneuron.facts import Fact
from kneuron.serve.app import create_app
from kneuron.serve.jobs import ProbeQueue
from kneuron.store import Atlas, run

pytestmark = pytest.mark.real_model

FRANCE = Fact("France", "capital", "Paris", ("The capital of [X] is [Y].", "The capital city of [X] is [Y]."))


def test_pages_and_a_probe_on_smollm2(smollm2, tmp_path):
    from kneuron.interventions import fingerprint

    path = tmp_path / "smollm2.sqlite"
    run(smollm2, [FRANCE], path, steps=4, progress=False)
    before = fingerprint(smollm2, fresh=True)
    with Atlas.open(path, read_only=True) as atlas:
        kn = atlas.knowledge_neurons("capital:France")
        stored = atlas.prompt_rows("capital:France")
    assert kn.neurons, "SmolLM2 has knowledge neurons for France -> Paris"
    names = ", ".join(f"L{n.layer}.N{n.index}" for n in kn.neurons)
    with ProbeQueue(smollm2) as queue, TestClient(create_app(path, model=smollm2, queue=queue),
            base_url="http://localhost") as client:
        fact = client.get("/api/fact/capital%3AFrance").json()
        assert [n["name"] for n in fact["refined"]] == [f"L{n.layer}.N{n.index}" for n in kn.neurons]
        assert "Knowledge neurons of smollm2-135m" in client.get("/").text
        for prompt in stored:
            answer = client.post("/api/probe", json={"prompt": prompt["text"], "answer": "Paris", "neurons": names})
            assert answer.status_code == 200, answer.text
            conditions = answer.json()["conditions"]
            assert conditions["as_is"]["probability"] == pytest.approx(prompt["probability"], rel=1e-4)
            assert conditions["as_is"]["rank"] == prompt["rank"] + 1  # the probe counts from 1
            assert conditions["suppressed"]["probability"] != conditions["as_is"]["probability"]
        writes = client.get(f"/api/neuron/L{kn.neurons[0].layer}.N{kn.neurons[0].index}/vocabulary").json()
        assert len(writes["promoted"]) == 10 and all(isinstance(t[1], str) for t in writes["promoted"])
    assert fingerprint(smollm2, fresh=True) == before
