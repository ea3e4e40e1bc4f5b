"""A run's progress: a rich bar on a terminal, plain lines a log can read everywhere else.

On a terminal the bar shows facts done, the rate, the elapsed time and the ETA. When stderr is not a terminal
(nohup, CI, a batch job's log) a bar would print nothing until the run ends, so a plain line is printed at
least every ``interval`` seconds (30 by default, from a timer thread, so also while a long chunk is computing)
and once at the end::

    progress: 12/38 facts (31.6%), 8.7 s/fact, elapsed 1m44s, ETA 3m46s, executor ray x2

The rate is wall-clock time since the first fact of this call began computing divided by the facts finished
since then (never a moving-window estimate), so ``rate x done == elapsed`` holds at every line.
"""

from __future__ import annotations

import threading
import time

#: seconds between two plain progress lines at most
INTERVAL = 30.0


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def rate_text(done: int, elapsed: float) -> str:
    """Seconds per fact below one fact per second, facts per second above; '--' before the first fact."""
    if done <= 0 or elapsed <= 0:
        return "-- s/fact"
    per = elapsed / done
    return f"{per:.1f} s/fact" if per >= 1 else f"{1 / per:.1f} facts/s"


class RunProgress:
    """Progress of ``total`` facts on ``console``; use as a context manager, call :meth:`advance` per fact."""

    def __init__(self, console, total: int, executor: str, interval: float = INTERVAL) -> None:
        self.console = console
        self.total = total
        self.executor = executor
        self.interval = interval
        self.done = 0
        self.started = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None
        self._task = None

    def line(self) -> str:
        """The plain progress line now."""
        with self._lock:
            done, elapsed = self.done, time.perf_counter() - self.started
        eta = "--" if not done else _duration(elapsed / done * (self.total - done))
        share = 100 * done / self.total if self.total else 100.0
        return (f"progress: {done}/{self.total} facts ({share:.1f}%), {rate_text(done, elapsed)}, elapsed "
                f"{_duration(elapsed)}, ETA {eta}, executor {self.executor}")

    def __enter__(self) -> RunProgress:
        self.started = time.perf_counter()
        if self.console.is_terminal:
            self._bar = _bar(self.console, self)
            self._bar.__enter__()
            self._task = self._bar.add_task("run", total=self.total)
        else:
            self._thread = threading.Thread(target=self._tick, name="kneuron-progress", daemon=True)
            self._thread.start()
        return self

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self.console.print(self.line(), highlight=False, soft_wrap=True)

    def advance(self, facts: int = 1) -> None:
        with self._lock:
            self.done += facts
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.console.print(self.line(), highlight=False, soft_wrap=True)


def _bar(console, progress: RunProgress):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        """Wall-clock rate (elapsed over done) and the ETA from it, not rich's moving-window speed."""

        def render(self, task) -> Text:
            with progress._lock:
                done, elapsed = progress.done, time.perf_counter() - progress.started
            eta = "--" if not done else _duration(elapsed / done * (progress.total - done))
            return Text(f"{rate_text(done, elapsed)} ETA {eta} ({progress.executor})", style="progress.data.speed")

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("facts"),
                    Rate(), TimeElapsedColumn(), console=console, transient=False)
