"""A run killed with SIGKILL, for real, and started again ends with exactly the atlas of an uninterrupted run.

Two child processes are killed (the second one a resumed run); the third start runs in the test's process.
The children are forked from the test process, so they need not import torch and transformers again.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from kneuron.store import run
from store.helpers import RUN_ARGS, dump, tiny_facts, tiny_model


def child(lm, path: str, pause: float, log: str) -> None:
    """The run in a forked child process; each chunk is slowed down (a sleep before and after attribution, inside
    the run) so that the parent can kill it with some facts committed and in the middle of another chunk."""
    from rich.console import Console

    from kneuron.store import chunks, runs

    real = chunks.compute_chunk

    def slow(*args, **kwargs):
        time.sleep(pause)
        found = real(*args, **kwargs)
        time.sleep(pause)
        return found

    chunks.compute_chunk = slow
    with open(log, "w") as handle:
        console = Console(file=handle, width=200)
        runs.run(lm, tiny_facts(), path, **{**RUN_ARGS, "progress": True}, console=console)


def done_facts(path: Path) -> int:
    """Facts committed so far (0 while the file or its tables do not exist yet)."""
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            return db.execute("SELECT count(*) FROM facts WHERE status = 'done'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def start(lm, path: Path, pause: float, log: Path) -> multiprocessing.Process:
    """A real child process, forked: it inherits the model and the imported torch and transformers (importing
    them again would take seconds)."""
    process = multiprocessing.get_context("fork").Process(target=child, args=(lm, str(path), pause, str(log)))
    process.start()
    return process


def kill_when(process: multiprocessing.Process, path: Path, facts: int, timeout: float = 60.0) -> int:
    """SIGKILL ``process`` once ``facts`` facts are committed; returns how many were committed then."""
    deadline = time.monotonic() + timeout
    while done_facts(path) < facts:
        if not process.is_alive():
            pytest.fail(f"the run ended (exit code {process.exitcode}) before it was killed")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the run committed no facts in time")
        time.sleep(0.01)
    time.sleep(0.03)  # land somewhere inside the next fact
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    assert process.exitcode == -signal.SIGKILL
    return done_facts(path)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL (POSIX)")
def test_sigkilled_run_resumes_to_exactly_the_uninterrupted_atlas(tmp_path):
    lm = tiny_model("llama")
    killed = tmp_path / "killed.sqlite"
    first = start(lm, killed, 0.05, tmp_path / "first.log")
    after_first = kill_when(first, killed, facts=2)
    second = start(lm, killed, 0.01, tmp_path / "second.log")  # shorter: the kill may land in a write
    after_second = kill_when(second, killed, facts=after_first + 3)
    assert 2 <= after_first < after_second < 10
    assert f"{10 - after_first} to compute, {after_first} already done" in (tmp_path / "second.log").read_text()
    summary = run(lm, tiny_facts(), killed, **RUN_ARGS)  # the third start runs to the end here
    assert (summary.computed, summary.already_done) == (10 - after_second, after_second)

    uninterrupted = tmp_path / "uninterrupted.sqlite"
    run(tiny_model("llama"), tiny_facts(), uninterrupted, **RUN_ARGS)
    got, want = dump(killed), dump(uninterrupted)
    assert got.keys() == want.keys()
    for table in want:
        assert got[table] == want[table], table  # row for row; score BLOBs byte for byte
    assert len(want["prompts"]) == 30 and len(want["facts"]) == 10
    assert not Path(f"{killed}-wal").exists() or Path(f"{killed}-wal").stat().st_size == 0
