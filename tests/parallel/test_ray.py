"""The Ray executor on a local cluster (2 CPUs, started once for this module): atlases equal to the local
executor's byte for byte with 1 and 2 workers, a worker SIGKILLed mid-chunk recovered, a driver interrupted and
resumed, and one clear error for each way it cannot start. Workers load a tiny model saved to a folder."""

from __future__ import annotations

import os
import signal

import pytest

from kneuron.errors import KneuronError
from kneuron.models import load
from kneuron.parallel import RayExecutor
from kneuron.store import Atlas, run
from store.helpers import RUN_ARGS, dump, synthetic_facts, tiny_model

ray = pytest.importorskip("ray", reason="the Ray tests need the ray extra (pip install 'kneuron[ray]')")

ARGS = {**RUN_ARGS, "chunk_facts": 2}
#: every wait on the cluster is bounded by this (seconds)
START = 120.0


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model saved to a folder (the path every worker loads) and the driver's copy loaded from it."""
    folder = tmp_path_factory.mktemp("model") / "tiny-llama"
    lm = tiny_model("llama")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return str(folder), load(str(folder))


@pytest.fixture(scope="module")
def facts():
    return synthetic_facts(12)


@pytest.fixture(scope="module")
def local(saved, facts, tmp_path_factory):
    path = tmp_path_factory.mktemp("local") / "local.sqlite"
    run(saved[1], facts, path, **ARGS)
    return dump(path)


def test_one_worker_equals_local(cluster, saved, facts, local, tmp_path):
    executor = RayExecutor(saved[0], workers=1, start_timeout=START)
    summary = run(saved[1], facts, tmp_path / "ray1.sqlite", executor=executor, **ARGS)
    assert summary.computed == 12
    assert dump(tmp_path / "ray1.sqlite") == local  # row for row, score BLOBs byte for byte


@pytest.mark.parametrize("estimator", [{"estimator": "gxa"}, {"screen": 2}], ids=["gxa", "screened"])
def test_other_estimators_on_two_workers_equal_local(cluster, saved, facts, tmp_path, estimator):
    """Workers build the estimator from the params they receive, so a gradient x activation run and a screened
    run write the local atlas too."""
    run(saved[1], facts, tmp_path / "local.sqlite", **ARGS, **estimator)
    executor = RayExecutor(saved[0], workers=2, start_timeout=START)
    summary = run(saved[1], facts, tmp_path / "ray.sqlite", executor=executor, **ARGS, **estimator)
    assert summary.computed == 12
    assert dump(tmp_path / "ray.sqlite") == dump(tmp_path / "local.sqlite")


def test_two_workers_one_sigkilled_mid_chunk_equals_local(cluster, saved, facts, local, tmp_path):
    """After the first chunk arrives, SIGKILL a worker that has chunks in flight: they run again on a new
    worker; no fact is lost or stored twice, and the atlas equals the local one."""
    killed: list[int] = []

    def kill_busy_worker(_result):
        if killed:
            return
        pid = next(pid for pid, chunks in executor.busy().items() if chunks)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    executor = RayExecutor(saved[0], workers=2, start_timeout=START, on_result=kill_busy_worker)
    stored: list[str] = []
    original = Atlas.store_fact

    def counting(self, fact_id, *args, **kwargs):
        stored.append(fact_id)
        return original(self, fact_id, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Atlas, "store_fact", counting)
        summary = run(saved[1], facts, tmp_path / "ray2.sqlite", executor=executor, **ARGS)
    assert killed and executor.reruns >= 1 and executor.replaced == 1
    assert sorted(stored) == sorted(f.id for f in facts)  # each fact stored exactly once
    assert summary.computed == 12
    assert dump(tmp_path / "ray2.sqlite") == local


def test_driver_interrupted_resumes_to_the_local_atlas(cluster, saved, facts, local, tmp_path):
    path = tmp_path / "resumed.sqlite"
    original = Atlas.store_fact
    stored = []

    def store_then_stop(self, fact_id, *args, **kwargs):
        if len(stored) == 5:
            raise KeyboardInterrupt
        stored.append(fact_id)
        return original(self, fact_id, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Atlas, "store_fact", store_then_stop)
        with pytest.raises(KeyboardInterrupt):
            run(saved[1], facts, path, executor=RayExecutor(saved[0], workers=1, start_timeout=START), **ARGS)
    summary = run(saved[1], facts, path, executor=RayExecutor(saved[0], workers=1, start_timeout=START), **ARGS)
    assert (summary.computed, summary.already_done) == (7, 5)
    assert dump(path) == local


def test_worker_that_cannot_load_the_model_is_one_clear_error(cluster, saved, facts, tmp_path):
    executor = RayExecutor(str(tmp_path / "no-such-model"), workers=1, start_timeout=START)
    with pytest.raises(KneuronError, match="could not load the model"):
        run(saved[1], facts[:2], tmp_path / "bad.sqlite", executor=executor, **ARGS)


def test_worker_with_another_model_refuses(cluster, saved, facts, tmp_path):
    other = tmp_path / "other"
    lm = tiny_model("llama", seed=1)
    lm.model.save_pretrained(other)
    lm.tokenizer.save_pretrained(other)
    executor = RayExecutor(str(other), workers=1, start_timeout=START)
    with pytest.raises(KneuronError, match="not the atlas's model: fingerprint"):
        run(saved[1], facts[:2], tmp_path / "other.sqlite", executor=executor, **ARGS)


def test_workers_that_cannot_be_placed_time_out_with_an_error(cluster, saved, facts, tmp_path):
    executor = RayExecutor(saved[0], workers=1, gpus_per_worker=1, device="cpu", start_timeout=2)
    with pytest.raises(KneuronError, match="did not start within 2 s"):
        run(saved[1], facts[:2], tmp_path / "gpu.sqlite", executor=executor, **ARGS)


def test_unreachable_address_is_one_clear_error(saved, monkeypatch):
    """Nothing listens at the address: an error within seconds (ray.init alone would retry for minutes)."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    executor = RayExecutor(saved[0], address=f"127.0.0.1:{port}")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh driver process
    with pytest.raises(KneuronError, match=f"No Ray cluster reachable at 127.0.0.1:{port}"):
        executor._connect(ray)
    with pytest.raises(KneuronError, match="is not host:port"):
        RayExecutor(saved[0], address="nowhere")._connect(ray)


def test_missing_ray_is_one_clear_error(saved, facts, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(KneuronError, match=r"needs Ray, which is not installed: pip install 'kneuron\[ray\]'"):
        RayExecutor(saved[0])  # at construction, before any atlas is written
