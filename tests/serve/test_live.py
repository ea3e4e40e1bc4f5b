"""The server beside a run that writes its atlas, and the find page's optional save."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from fastapi.testclient import TestClient

from kneuron.serve.app import create_app
from kneuron.serve.jobs import ProbeQueue
from kneuron.store import run
from serve.conftest import atlas_model
from store.helpers import tiny_facts

RUN = {"steps": 3, "known_only": False, "progress": False, "share": 0.3, "keep_scores": "full"}


def test_pages_are_consistent_while_a_run_writes(tmp_path):
    """Every overview shows one moment: its relations add up to its done facts, which only grow; every fact a
    relation page calls done has its prompts and neurons."""
    path = tmp_path / "growing.sqlite"
    facts = tiny_facts()
    run(atlas_model(), facts[:3], path, chunk_facts=1, **RUN)
    writer = threading.Thread(target=run, args=(atlas_model(), facts, path), kwargs={"chunk_facts": 1, **RUN})
    seen = []
    with TestClient(create_app(path), base_url="http://localhost") as client:
        writer.start()
        while writer.is_alive() or len(seen) < 3:
            overview = client.get("/api/overview").json()
            assert sum(r["done"] for r in overview["relations"]) == overview["done"]
            seen.append(overview["done"])
            for fact in client.get("/api/relation/capital").json()["facts"]:
                if fact["status"] == "done":
                    assert fact["prompts"] == 3 and fact["neurons"] == len(
                        client.get(f"/api/fact/{fact['id']}").json()["refined"])
            time.sleep(0.05)
        writer.join()
        final = client.get("/api/overview").json()["done"]
    assert seen == sorted(seen) and seen[0] >= 3 and final == 10
    assert len(set(seen)) > 1, "the run finished before the pages saw it write"


def wait_job(client, job_id: str) -> dict:
    deadline = time.monotonic() + 120
    while True:
        state = client.get(f"/api/jobs/{job_id}").json()
        if state["status"] in ("done", "failed"):
            return state
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_find_writes_nothing_unless_asked(atlas_copy):
    lm = atlas_model()
    digest = hashlib.sha256(atlas_copy.read_bytes()).hexdigest()
    with ProbeQueue(lm) as queue, TestClient(create_app(atlas_copy, model=lm, queue=queue),
            base_url="http://localhost") as client:
        body = {"prompts": ["The capital of France is", "The capital city of France is"], "answer": "Paris"}
        started = client.post("/api/find", json=body)
        assert started.status_code == 202
        state = wait_job(client, started.json()["job"])
        assert state["status"] == "done" and state["progress"] == [2, 2] and "saved" not in state["result"]
        refused = client.post("/api/find", json={**body, "save": True, "subject": "France", "relation": "seat"})
        assert refused.status_code == 400 and "--allow-save" in refused.json()["error"]
    assert hashlib.sha256(atlas_copy.read_bytes()).hexdigest() == digest


def test_find_saves_a_fact_when_the_server_allows_it(atlas_copy):
    lm = atlas_model()
    with ProbeQueue(lm) as queue, \
            TestClient(create_app(atlas_copy, model=lm, queue=queue, allow_save=True),
                    base_url="http://localhost") as client:
        body = {"prompts": ["The capital of France is", "France's capital city is"], "answer": "Paris",
                "save": True, "subject": "France", "relation": "seat"}
        bad = client.post("/api/find", json={**body, "subject": "Spain"})
        assert bad.status_code == 400 and "does not contain the subject 'Spain'" in bad.json()["error"]
        state = wait_job(client, client.post("/api/find", json=body).json()["job"])
        assert state["status"] == "done", state
        saved = state["result"]["saved"]
        assert saved["status"] == "added" and saved["fact_id"] == "seat:France"
        fact = client.get("/api/fact/seat%3AFrance").json()
        assert fact["templates"] == ["The capital of [X] is [Y]", "[X]'s capital city is [Y]"]
        assert fact["status"] == "done" and [p["text"] for p in fact["prompts"]] == body["prompts"]
        assert client.get("/api/overview").json()["done"] == 11


@pytest.mark.parametrize("payload", [{"prompts": [], "answer": "Paris"}, {"prompts": ["x"] * 9, "answer": "Paris"},
                                     {"prompts": "The capital of France is", "answer": ""}])
def test_bad_finds_are_refused_before_they_queue(atlas_copy, payload):
    lm = atlas_model()
    with ProbeQueue(lm) as queue, TestClient(create_app(atlas_copy, model=lm, queue=queue),
            base_url="http://localhost") as client:
        response = client.post("/api/find", json=payload)
        assert response.status_code == 400 and "\n" not in response.json()["error"]
        assert queue.pending() == 0
