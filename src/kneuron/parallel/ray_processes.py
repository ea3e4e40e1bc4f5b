"""The processes of a local Ray cluster kneuron started, so that they end with the run on every exit path.

``ray.init()`` without an address starts a head node as children of the driver (gcs_server, raylet, the
dashboard, monitor and log monitor), and the raylet starts the DashboardAgent, the RuntimeEnvAgent and the
workers. ``ray.shutdown()`` ends them when the driver exits through Python (a normal end, an exception,
KeyboardInterrupt, and SIGTERM, which the executor turns into an exception). A SIGKILLed driver runs no code, and
the agents outlived it (they were still alive 60 s later). So the executor starts a **watchdog**: a small process
in its own session that holds the read end of a pipe from the driver, learns the cluster's processes (pid and
start time, so that a reused pid is never touched), and when the pipe closes (the driver is gone, however it
ended) kills those still alive. On a normal end it finds them already gone.

What holds: on Linux (the processes are read from ``/proc``), every process of the cluster that existed when the
driver last reported them (after the workers started, and after each replacement) is killed at most a second or
so after the driver dies. A process the cluster starts later and the driver never saw (a worker Ray restarts on
its own between two reports) can outlive a SIGKILLed driver. Elsewhere there is no watchdog: only the exits
Python sees are covered. A cluster kneuron joined (``--ray-address``) is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO

#: identity of a process: (pid, start time in clock ticks since boot)
Identity = tuple[int, int]

_WATCHDOG = r"""
import json, os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)   # the terminal's ^C is for the driver; the pipe tells us when it ends
signal.signal(signal.SIGTERM, signal.SIG_IGN)

def started(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None

known = {}
for line in sys.stdin:
    for pid, start in json.loads(line):
        known[pid] = start
for _ in range(2):  # the driver is gone: end what is left of its cluster, then once more for late children
    for pid, start in known.items():
        if started(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    time.sleep(0.5)
"""


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of ``pid`` from /proc, or None when it is gone (or not Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def descendants(pid: int) -> list[Identity]:
    """Every live process below ``pid`` (children, their children, ...), with its start time."""
    parents: dict[int, list[Identity]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                parents.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found: list[Identity] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _is_ray(pid: int) -> bool:
    """Whether ``pid`` is a Ray process (its command line names Ray: ``ray::...``, ``.../ray/...``)."""
    try:
        return b"ray" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def command_line(pid: int) -> str:
    """``pid``'s command line, or "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def alive(identity: Identity) -> bool:
    """Whether the process is still the one that was seen (same pid, same start time)."""
    stat = _stat(identity[0])
    return stat is not None and stat[1] == identity[1]


class Watchdog:
    """The watchdog of one local cluster (see the module docstring): :meth:`report` the processes to end with the
    driver; :meth:`close` when the cluster is shut down (the watchdog then ends whatever is left and exits)."""

    def __init__(self) -> None:
        self._pipe: IO[str] | None = None
        self._process: subprocess.Popen | None = None
        if not Path("/proc/self/stat").exists():
            return  # not Linux: no way to tell a process from a reused pid; only Python's exits are covered
        self._process = subprocess.Popen([sys.executable, "-c", _WATCHDOG], stdin=subprocess.PIPE, text=True,
                                         start_new_session=True, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        self._pipe = self._process.stdin

    def report(self) -> list[Identity]:
        """Tell the watchdog the driver's descendants now (the cluster it started); returns them."""
        processes = [p for p in descendants(os.getpid()) if _is_ray(p[0])
                     and (self._process is None or p[0] != self._process.pid)]
        if self._pipe is not None:
            try:
                self._pipe.write(json.dumps(processes) + "\n")
                self._pipe.flush()
            except OSError:
                pass
        return processes

    def close(self) -> None:
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                self._pipe.close()
            self._pipe = None
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
            self._process = None


def end(processes: list[Identity]) -> None:
    """SIGKILL those of ``processes`` still alive (the cluster's leftovers after a shutdown that could not finish)."""
    import signal

    for identity in processes:
        if alive(identity):
            with contextlib.suppress(OSError):
                os.kill(identity[0], signal.SIGKILL)
