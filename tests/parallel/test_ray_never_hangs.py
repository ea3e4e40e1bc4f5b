"""A Ray run never hangs, and a local cluster kneuron starts ends with it: `kneuron run --executor ray` in a child
process with its own local cluster, and the kills a crash, the OOM killer or an operator can make, from here with
os.kill. Each run ends with one line saying what happened and that the same command resumes, the facts stored
before stay stored, and no process of its cluster outlives it (also when the driver itself is SIGKILLed)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kneuron.parallel.ray_processes import alive, command_line, descendants
from store.helpers import tiny_model

pytest.importorskip("ray", reason="the Ray tests need the ray extra (pip install 'kneuron[ray]')")
if not Path("/proc/self/stat").exists():
    pytest.skip("the processes of the cluster are read from /proc (Linux)", allow_module_level=True)

#: every wait here is bounded by this (seconds); a hang fails the test instead of blocking the suite
BOUND = 150.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny-llama"
    lm = tiny_model("llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def done(atlas: Path) -> dict[str, int]:
    if not atlas.exists():
        return {}
    db = sqlite3.connect(f"{atlas.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return dict(db.execute("SELECT status, count(*) FROM facts GROUP BY status").fetchall())
    except sqlite3.Error:
        return {}
    finally:
        db.close()


def start(folder: Path, atlas: Path, stall: float = 60.0) -> subprocess.Popen:
    """The run: 100 steps, one fact per chunk, one worker (slow enough to be caught mid-run)."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1", "COLUMNS": "250"}
    return subprocess.Popen(
        [sys.executable, "-m", "kneuron.cli", "run", "--model", str(folder), "--out", str(atlas), "--steps", "100",
         "--all-facts", "--per-relation", "3", "--executor", "ray", "--workers", "1", "--chunk-facts", "1",
         "--stall-timeout", str(stall)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cluster_once_running(run: subprocess.Popen, atlas: Path) -> list[tuple[int, int]]:
    """The run's Ray processes once its worker is up and a fact is stored (a bounded wait)."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline and run.poll() is None:
        processes = descendants(run.pid)
        if any(command_line(pid).startswith("ray::_Worker") for pid, _ in processes) and done(atlas).get("done"):
            return processes
        time.sleep(0.5)
    run.kill()
    pytest.fail(f"the run never got going: {run.communicate()[1][-2000:]}")


def finish(run: subprocess.Popen) -> tuple[int, list[str]]:
    try:
        _, err = run.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        run.kill()
        pytest.fail(f"the run hung: {run.communicate()[1][-2000:]}")
    return run.returncode, [line for line in err.splitlines() if line.startswith("error: ")]


def assert_gone(processes: list[tuple[int, int]]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(p) for p in processes):
        time.sleep(0.5)
    left = [command_line(pid)[:60] for pid, start in processes if alive((pid, start))]
    assert not left, f"processes of the run's cluster outlived it: {left}"


def find(processes, prefix: str) -> int:
    return next(pid for pid, _ in processes if command_line(pid).startswith(prefix))


def test_a_killed_dashboard_agent_ends_the_run_in_one_resumable_line(folder, tmp_path):
    atlas = tmp_path / "agent.sqlite"
    run = start(folder, atlas)
    processes = cluster_once_running(run, atlas)
    stored = done(atlas)["done"]
    os.kill(find(processes, "ray::DashboardAgent"), signal.SIGKILL)  # the raylet dies with it, and the worker
    code, errors = finish(run)
    assert code == 1 and len(errors) == 1, errors
    assert "no live node left" in errors[0] or "raylet" in errors[0], errors
    assert "run the same command again to resume" in errors[0]
    assert done(atlas)["done"] >= stored and done(atlas).get("pending")  # kept, and resumable
    assert_gone(processes)


def test_a_worker_that_stops_answering_ends_the_run_after_the_stall_timeout(folder, tmp_path):
    atlas = tmp_path / "stall.sqlite"
    run = start(folder, atlas, stall=4)
    processes = cluster_once_running(run, atlas)
    os.kill(find(processes, "ray::_Worker"), signal.SIGSTOP)  # alive, but nothing comes back
    code, errors = finish(run)
    assert code == 1 and len(errors) == 1 and "stopped making progress" in errors[0], errors
    assert "stall_timeout 4 s" in errors[0] and "resume" in errors[0]
    assert done(atlas).get("done") and done(atlas).get("pending")
    assert_gone(processes)  # the stopped worker too


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_cluster_ends_with_its_driver(folder, tmp_path, how):
    atlas = tmp_path / "driver.sqlite"
    run = start(folder, atlas)
    processes = cluster_once_running(run, atlas)
    os.kill(run.pid, how)
    code, _ = finish(run)
    assert code == (143 if how == signal.SIGTERM else -signal.SIGKILL)
    assert_gone(processes)  # SIGTERM: ray.shutdown on the way out; SIGKILL: the watchdog
    assert done(atlas).get("done")
