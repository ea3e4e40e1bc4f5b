"""Progress a log can read: plain lines when the console is not a terminal, at least every interval (also while
a chunk computes) and at the end; the rate is the wall clock's."""

from __future__ import annotations

import io
import threading

from rich.console import Console

from kneuron.store import chunks, progress, run
from store.helpers import RUN_ARGS, tiny_facts, tiny_model


def test_rate_and_eta_are_the_wall_clocks(monkeypatch):
    """The issue's example: 38 facts in 332 s is 8.7 s/fact (a moving window once said 13.1)."""
    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    bar = progress.RunProgress(Console(file=out, width=200), 40, "local", interval=3600)
    with bar:
        now[0] = 100.0 + 300.0
        bar.advance(30)
        now[0] = 100.0 + 332.0
        bar.advance(8)
        assert bar.line() == ("progress: 38/40 facts (95.0%), 8.7 s/fact, elapsed 5m32s, ETA 17s, "
                              "executor local")
        now[0] = 100.0 + 340.0
        bar.advance(2)
    assert out.getvalue().splitlines() == ["progress: 40/40 facts (100.0%), 8.5 s/fact, elapsed 5m40s, ETA 0s, "
                                           "executor local"]
    assert progress.rate_text(0, 5.0) == "-- s/fact" and progress.rate_text(10, 2.0) == "5.0 facts/s"


def test_plain_lines_while_a_chunk_computes_and_at_the_end(tmp_path, monkeypatch):
    """Not a terminal: a line appears while the first chunk is still computing (the chunk waits for it, bounded),
    and a last line says all facts are done."""
    out = io.StringIO()
    console = Console(file=out, width=200)
    assert not console.is_terminal
    seen = threading.Event()
    real = chunks.compute_chunk

    def wait_for_a_line(*args, **kwargs):
        if not seen.is_set():
            for _ in range(200):  # bounded: 200 x 50 ms
                if "progress: 0/4 facts" in out.getvalue():
                    seen.set()
                    break
                seen.wait(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(chunks, "compute_chunk", wait_for_a_line)
    run(tiny_model("llama"), tiny_facts()[:4], tmp_path / "p.sqlite",
        **{**RUN_ARGS, "progress": True, "chunk_facts": 2}, console=console, progress_interval=0.05)
    assert seen.is_set()
    lines = [line for line in out.getvalue().splitlines() if line.startswith("progress:")]
    assert lines[0].startswith("progress: 0/4 facts, 0/12 prompts (0.0%), -- s/prompt")
    assert lines[0].endswith("executor local")
    assert lines[-1].startswith("progress: 4/4 facts, 12/12 prompts (100.0%)")
    assert "\x1b" not in out.getvalue()  # no terminal control codes in a log


def test_prompts_move_the_line_inside_a_chunk_and_the_eta_starts_at_the_first(tmp_path, monkeypatch):
    """One chunk of 4 facts (12 prompts) is one attribute call: with a fake clock that moves 31 s per prompt,
    a plain line appears per prompt while no fact is stored yet, with an ETA from the first prompt on."""
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    real = progress.RunProgress.prompt_done

    def slow_prompt(self, prompts=1):
        now[0] += 31.0  # each prompt takes longer than the 30 s between lines
        real(self, prompts)

    monkeypatch.setattr(progress.RunProgress, "prompt_done", slow_prompt)
    out = io.StringIO()
    run(tiny_model("llama"), tiny_facts()[:4], tmp_path / "p.sqlite",
        **{**RUN_ARGS, "progress": True, "chunk_facts": 4}, console=Console(file=out, width=200),
        progress_interval=30.0)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("progress:")]
    inside = [line for line in lines if line.startswith("progress: 0/4 facts")]
    counts = [int(line.split(", ")[1].split("/")[0]) for line in inside]
    assert len(inside) >= 3 and counts == sorted(set(counts)) and counts[0] >= 1  # moving, prompt by prompt
    assert all("ETA --" not in line for line in inside)
    assert inside[0].endswith("executor local") and "s/prompt" in inside[0]
    assert lines[-1].startswith("progress: 4/4 facts, 12/12 prompts (100.0%)")


def test_an_executor_without_prompt_reports_counts_each_chunk_when_it_arrives(monkeypatch):
    """Ray's workers cannot report prompts as they go: a chunk's prompts count when its result arrives, and a
    local chunk's reports are replaced by its count (never counted twice)."""
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    bar = progress.RunProgress(Console(file=io.StringIO(), width=200), 4, "ray x2", interval=3600, prompts=12)
    with bar:
        assert bar.line() == ("progress: 0/4 facts, 0/12 prompts (0.0%), -- s/prompt, elapsed 0s, ETA --, "
                              "executor ray x2")
        now[0] = 60.0
        bar.chunk_done(6)
        bar.advance(2)
        assert bar.line() == ("progress: 2/4 facts, 6/12 prompts (50.0%), 10.0 s/prompt, elapsed 1m00s, ETA 1m00s, "
                              "executor ray x2")
        bar.prompt_done(5)
        assert bar.prompts_done == 11
        bar.chunk_done(6)
        bar.advance(2)
        assert bar.prompts_done == 12
