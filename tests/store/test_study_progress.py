"""A study's progress in a log: `kneuron study` with stderr not a terminal prints plain lines (a rich bar prints
nothing there until the study ends), while it runs and at the end of each counted part."""

from __future__ import annotations

import io
import time

from rich.console import Console

from kneuron.cli import study_commands
from kneuron.store import progress


class _Named:
    name = "toy"


def test_lines_of_a_counted_part_with_the_wall_clock_rate(monkeypatch):
    now = [50.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    with progress.StudyProgress(Console(file=out, width=200), "toy", interval=3600) as plain:
        assert plain.line() == "progress: toy: running, elapsed 0s"
        advance = plain.task("toy: suppress", 4)
        now[0] += 90.0
        advance()
        assert plain.line() == "progress: toy: suppress: 1/4 facts (25.0%), 90.0 s/fact, elapsed 1m30s, ETA 4m30s"
        advance()
        later = plain.task("toy: edit", 2)  # the next part ends the one before with its line
        advance()  # an advance of a part that is over counts nothing
        now[0] += 10.0
        later()
        later()
    assert out.getvalue().splitlines() == [
        "progress: toy: suppress: 2/4 facts (50.0%), 45.0 s/fact, elapsed 1m30s, ETA 1m30s",
        "progress: toy: edit: 2/2 facts (100.0%), 5.0 s/fact, elapsed 10s, ETA 0s",
    ]


def test_the_cli_prints_lines_in_a_log_while_a_study_runs(monkeypatch):
    """Not a terminal: the timer prints a line while nothing is counted yet and while a part computes; a terminal
    gets the rich bar instead (and no plain line)."""
    out = io.StringIO()
    monkeypatch.setattr(study_commands, "err_console", Console(file=out, width=200))
    monkeypatch.setattr(progress, "INTERVAL", 0.01)
    events = study_commands.TerminalEvents()

    def wait_for(text: str) -> bool:
        for _ in range(500):  # bounded: 500 x 10 ms
            if text in out.getvalue():
                return True
            time.sleep(0.01)
        return False

    with events.running(_Named()):
        assert wait_for("progress: toy: running, elapsed")
        advance = events.progress("toy: counting", 3)
        advance()
        assert wait_for("progress: toy: counting: 1/3 facts (33.3%)")
        advance()
        advance()
    assert out.getvalue().splitlines()[-1].startswith("progress: toy: counting: 3/3 facts (100.0%)")

    terminal = io.StringIO()
    monkeypatch.setattr(study_commands, "err_console", Console(file=terminal, width=200, force_terminal=True))
    with events.running(_Named()):
        events.progress("toy: counting", 3)()
    assert "progress:" not in terminal.getvalue()
