"""A run's progress: a rich bar on a terminal, plain lines a log can read everywhere else.

A run counts its facts (stored) and the prompts attributed inside each chunk: a chunk of 16 facts is one
``attribute`` call that can take minutes, so facts alone would sit at ``0/16`` until all 16 arrive at once. The
local executor reports each prompt as the estimator finishes it (``on_prompt``); an executor that cannot (Ray's
workers compute a chunk out of process) has the chunk's prompts counted when its result comes back. The
percentage, the rate and the ETA are in prompts, so they move, and the ETA is there from the first finished
prompt.

On a terminal the bar shows prompts and facts done, the rate, the elapsed time and the ETA. When stderr is not a
terminal (nohup, CI, a batch job's log) a bar would print nothing until the run ends, so a plain line is printed
at least every ``interval`` seconds (30 by default, from a timer thread, so also while a long chunk is
computing), also when a prompt finishes ``interval`` seconds or more after the last line, and once at the end::

    progress: 3/38 facts, 41/304 prompts (13.5%), 2.5 s/prompt, elapsed 1m44s, ETA 11m04s, executor local

The rate is wall-clock time since the first prompt of this call began computing divided by the prompts finished
since then (never a moving-window estimate), so ``rate x done == elapsed`` holds at every line. Without a prompt
count (``prompts=None``) the same is done in facts.
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


def rate_text(done: int, elapsed: float, unit: str = "fact") -> str:
    """Seconds per ``unit`` below one per second, ``unit`` s per second above; '--' before the first one."""
    if done <= 0 or elapsed <= 0:
        return f"-- s/{unit}"
    per = elapsed / done
    return f"{per:.1f} s/{unit}" if per >= 1 else f"{1 / per:.1f} {unit}s/s"


class _Ticker:
    """Calls ``say()`` every ``interval`` seconds from a daemon thread, from :meth:`start` until :meth:`stop` (which
    waits for the thread): the plain lines a log gets while nothing else moves."""

    def __init__(self, say, interval: float, name: str) -> None:
        self._say, self._interval = say, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._say()

    def start(self) -> _Ticker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class RunProgress:
    """Progress of ``total`` facts (and ``prompts`` prompts, when given) on ``console``; use as a context manager,
    call :meth:`prompt_done` as each prompt is attributed, :meth:`chunk_done` with a chunk's prompts when its
    result arrives and :meth:`advance` per stored fact."""

    def __init__(self, console, total: int, executor: str, interval: float = INTERVAL, *,
                 prompts: int | None = None) -> None:
        self.console = console
        self.total = total
        self.executor = executor
        self.interval = interval
        self.prompts = prompts
        self.done = 0
        self._settled = 0  # prompts of the chunks whose results arrived
        self._live = 0  # prompts reported so far by the chunk being computed
        self.started = time.perf_counter()
        self._said = self.started
        self._lock = threading.Lock()
        self._ticker: _Ticker | None = None
        self._bar = None
        self._task = None

    @property
    def prompts_done(self) -> int:
        """Prompts attributed so far (of chunks that arrived and of the one computing)."""
        return min(self._settled + self._live, self.prompts) if self.prompts is not None else 0

    def _state(self) -> tuple[int, int, float]:
        """(units done, units in all, elapsed seconds): in prompts when they are counted, else in facts."""
        with self._lock:
            elapsed = time.perf_counter() - self.started
            if self.prompts is not None:
                return self.prompts_done, self.prompts, elapsed
            return self.done, self.total, elapsed

    def _eta(self, done: int, total: int, elapsed: float) -> tuple[str, str]:
        """The rate and the ETA text of a :meth:`_state`."""
        unit = "prompt" if self.prompts is not None else "fact"
        eta = "--" if not done else _duration(elapsed / done * (total - done))
        return rate_text(done, elapsed, unit), eta

    def line(self) -> str:
        """The plain progress line now."""
        done, total, elapsed = self._state()
        share = 100 * done / total if total else 100.0
        rate, eta = self._eta(done, total, elapsed)
        counts = f"{self.done}/{self.total} facts"
        if self.prompts is not None:
            counts += f", {done}/{total} prompts"
        return (f"progress: {counts} ({share:.1f}%), {rate}, elapsed {_duration(elapsed)}, ETA {eta}, "
                f"executor {self.executor}")

    def __enter__(self) -> RunProgress:
        self.started = self._said = time.perf_counter()
        if self.console.is_terminal:
            self._bar = _bar(self.console, self)
            self._bar.__enter__()
            self._task = self._bar.add_task("run", total=self.prompts if self.prompts is not None else self.total)
        else:
            self._ticker = _Ticker(self._say, self.interval, "kneuron-progress").start()
        return self

    def _say(self) -> None:
        with self._lock:
            self._said = time.perf_counter()
        self.console.print(self.line(), highlight=False, soft_wrap=True)

    def _moved(self) -> None:
        if self._bar is not None:
            done, _, _ = self._state()
            self._bar.update(self._task, completed=done)
        elif time.perf_counter() - self._said >= self.interval:
            self._say()

    def prompt_done(self, prompts: int = 1) -> None:
        """``prompts`` more prompts of the chunk being computed are attributed."""
        with self._lock:
            self._live += prompts
        self._moved()

    def chunk_done(self, prompts: int) -> None:
        """A chunk's result arrived: its ``prompts`` count as done (replacing what it reported as it went)."""
        with self._lock:
            self._settled += prompts
            self._live = 0
        self._moved()

    def advance(self, facts: int = 1) -> None:
        """``facts`` more facts are stored."""
        with self._lock:
            self.done += facts
        self._moved()

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            return
        if self._ticker is not None:
            self._ticker.stop()
        self.console.print(self.line(), highlight=False, soft_wrap=True)


def _bar(console, progress: RunProgress):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        """Facts stored, the wall-clock rate (elapsed over done) and the ETA from it, not rich's moving-window
        speed."""

        def render(self, task) -> Text:
            rate, eta = progress._eta(*progress._state())
            return Text(f"{progress.done}/{progress.total} facts, {rate} ETA {eta} ({progress.executor})",
                        style="progress.data.speed")

    unit = "prompts" if progress.prompts is not None else "facts"
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                    Rate(), TimeElapsedColumn(), console=console, transient=False)


class StudyProgress:
    """Plain progress lines of one study for a log (stderr not a terminal): a rich bar would print nothing until
    the study ends, and a study can take half an hour.

    Use as a context manager around the study's run. :meth:`task` starts a counted part (``description``,
    ``total`` facts) and returns its ``advance()``; starting the next part ends the one before. A line is printed
    at least every ``interval`` seconds from a timer thread (also while no part is counted: then it says how long
    the study has run), when an advance comes ``interval`` seconds or more after the last line, at the end of each
    part and once at the end::

        progress: estimators: 12/48 facts (25.0%), 22.9 s/fact, elapsed 4m35s, ETA 13m44s

    The rate is the part's wall-clock time over its finished facts, as in :class:`RunProgress`.
    """

    def __init__(self, console, study: str, interval: float | None = None) -> None:
        self.console = console
        self.study = study
        self.interval = INTERVAL if interval is None else interval
        self._lock = threading.Lock()
        self._ticker: _Ticker | None = None
        self.started = self._said = time.perf_counter()
        self._part: tuple[str, int] | None = None  # (description, total)
        self._part_started = self.started
        self._done = 0

    def line(self) -> str:
        """The plain progress line now."""
        with self._lock:
            now = time.perf_counter()
            if self._part is None:
                return f"progress: {self.study}: running, elapsed {_duration(now - self.started)}"
            (description, total), done, elapsed = self._part, self._done, now - self._part_started
        share = 100 * done / total if total else 100.0
        eta = "--" if not done else _duration(elapsed / done * (total - done))
        return (f"progress: {description}: {done}/{total} facts ({share:.1f}%), {rate_text(done, elapsed)}, "
                f"elapsed {_duration(elapsed)}, ETA {eta}")

    def _say(self) -> None:
        text = self.line()
        with self._lock:
            self._said = time.perf_counter()
        self.console.print(text, highlight=False, soft_wrap=True)

    def _end_part(self) -> None:
        if self._part is not None:
            self._say()

    def task(self, description: str, total: int):
        """Start counting a part of ``total`` facts; returns its ``advance()`` (one fact)."""
        self._end_part()
        with self._lock:
            self._part, self._done = (description, total), 0
            self._part_started = time.perf_counter()
        part = self._part

        def advance() -> None:
            with self._lock:
                if self._part is not part:  # a later part has started: this one is over
                    return
                self._done += 1
                due = time.perf_counter() - self._said >= self.interval
            if due:
                self._say()

        return advance

    def __enter__(self) -> StudyProgress:
        self.started = self._said = time.perf_counter()
        self._ticker = _Ticker(self._say, self.interval, "kneuron-study-progress").start()
        return self

    def __exit__(self, *exc) -> None:
        if self._ticker is not None:
            self._ticker.stop()
        self._end_part()
