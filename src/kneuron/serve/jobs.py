"""One model, one probe at a time: the bounded job queue behind the live probes of ``kneuron serve``.

A web server answers requests on many threads, but a model must never run two forward passes at once (hooks are
registered on shared modules) and a 2-core machine gains nothing from trying. :class:`ProbeQueue` owns the model
and runs the probes one after another, in the order they came, on its one worker thread; a request thread submits
a job and either waits for it (:meth:`ProbeQueue.run`, for quick probes) or polls it by id (:meth:`ProbeQueue.get`,
for a find that takes minutes and reports its progress). At most ``max_pending`` jobs wait or run (more are
refused with :class:`QueueFull`), and at most ``keep`` finished jobs are remembered, so memory stays bounded.

Example:
    >>> with ProbeQueue(lm) as queue:
    ...     result = queue.run("probe", lambda job: probe(job.lm, "The capital of France is", "Paris", [(3, 7)]))
    ...     job = queue.submit("find", lambda job: find(job.lm, prompts, "Paris", params, job.set_progress))
    ...     queue.get(job.id).progress      # (2, 4) while it runs
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Literal

from kneuron.errors import JobFailed, JobTimeout, KneuronError, QueueClosed, QueueFull
from kneuron.models.language_model import LanguageModel

logger = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "done", "failed"]


def one_line(exc: BaseException) -> str:
    """The message a page shows for ``exc``: a KneuronError's own message on one line; for anything else only
    "internal error: <ExceptionType>" (its message and traceback may hold internals: they go to the log)."""
    if isinstance(exc, KneuronError):
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        return text or type(exc).__name__
    return f"internal error: {type(exc).__name__}"


class Job:
    """One probe in the queue. Read it from any thread; only the worker and the job function change it.

    Attributes:
        id: an unguessable token (16 hex digits), what a page polls.
        kind: what the job is ("probe", "find", "save", ...), for the page and the log.
        status: "queued", "running", "done" or "failed".
        progress: ``(done, total)`` as the job function reports it (:meth:`set_progress`), or None.
        result: what the function returned (when done).
        error: one line (when failed): see :func:`one_line`.
        created, started, finished: ``time.time()`` of each step, None until it happened.
        lm: the queue's model, for the job function (no other thread may use it).
    """

    def __init__(self, kind: str, fn: Callable[[Job], Any], lm: LanguageModel | None) -> None:
        self.id = secrets.token_hex(8)
        self.kind = kind
        self.fn = fn
        self.lm = lm
        self.status: JobStatus = "queued"
        self.progress: tuple[int, int] | None = None
        self.result: Any = None
        self.error: str | None = None
        self.exception: BaseException | None = None
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self._done = threading.Event()

    def set_progress(self, done: int, total: int) -> None:
        """Report progress (e.g. prompts attributed of all); the signature of :func:`~kneuron.serve.probes.find`'s
        ``on_prompt``."""
        self.progress = (int(done), int(total))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished (done or failed), at most ``timeout`` seconds; whether it has."""
        return self._done.wait(timeout)

    def as_dict(self, result: bool = True) -> dict[str, Any]:
        """The job as JSON: id, kind, status, progress, error, times (and the result when ``result``)."""
        out = {"id": self.id, "kind": self.kind, "status": self.status,
               "progress": list(self.progress) if self.progress is not None else None, "error": self.error,
               "created": self.created, "started": self.started, "finished": self.finished}
        if result:
            out["result"] = self.result
        return out

    def __repr__(self) -> str:
        return f"Job({self.id}, {self.kind}, {self.status})"


class ProbeQueue:
    """Runs jobs one at a time, in submission order, on one worker thread that alone uses ``lm``.

    Args:
        lm: the model the jobs use (``job.lm``); None for a queue of jobs that need none.
        max_pending: most jobs queued or running at once; :meth:`submit` refuses more with :class:`QueueFull`.
        keep: most finished jobs remembered (the oldest are forgotten first); queued and running ones are always
            kept.

    Thread-safe: any number of threads may submit and read at once. Use as a context manager, or call
    :meth:`close`.
    """

    def __init__(self, lm: LanguageModel | None = None, *, max_pending: int = 16, keep: int = 64) -> None:
        if max_pending < 1 or keep < 0:
            raise KneuronError(f"max_pending must be at least 1 and keep at least 0; got {max_pending} and {keep}.")
        self.lm = lm
        self.max_pending = max_pending
        self.keep = keep
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queued: deque[Job] = deque()
        self._running: Job | None = None
        self._jobs: dict[str, Job] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="kneuron-probes", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------------------------------- submitting

    def submit(self, kind: str, fn: Callable[[Job], Any]) -> Job:
        """Queue ``fn(job)`` to run after the jobs before it; returns the job at once (status "queued").

        Raises:
            QueueFull: ``max_pending`` jobs are queued or running.
            QueueClosed: after :meth:`close`.
        """
        job = Job(kind, fn, self.lm)
        with self._wake:
            if self._closed:
                raise QueueClosed("The probe queue is closed (the server is shutting down): nothing was run.")
            pending = len(self._queued) + (self._running is not None)
            if pending >= self.max_pending:
                raise QueueFull(f"{pending} probes are waiting; try again in a moment.")
            self._queued.append(job)
            self._jobs[job.id] = job
            self._wake.notify()
        return job

    def run(self, kind: str, fn: Callable[[Job], Any], timeout: float | None = 60.0) -> Any:
        """Submit ``fn`` and wait for its result (for probes that take moments).

        Raises:
            QueueFull, QueueClosed: as :meth:`submit`.
            JobTimeout: not finished after ``timeout`` seconds (it goes on and finishes in the background).
            KneuronError: the one the job raised (e.g. a ProbeInputError), re-raised.
            JobFailed: the job raised something else ("internal error: <ExceptionType>").
        """
        job = self.submit(kind, fn)
        if not job.wait(timeout):
            raise JobTimeout(f"The {kind} is still running after {timeout:g} s; it will finish in the background "
                             f"(job {job.id}).", job.id)
        if job.status == "failed":
            if isinstance(job.exception, KneuronError):
                raise job.exception
            raise JobFailed(job.error or "internal error")
        return job.result

    def get(self, job_id: str) -> Job | None:
        """The job with this id while it is queued or running or among the last ``keep`` finished, else None."""
        with self._lock:
            return self._jobs.get(job_id)

    def pending(self) -> int:
        """Jobs queued or running now."""
        with self._lock:
            return len(self._queued) + (self._running is not None)

    # ----------------------------------------------------------------------------------------------- worker

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._queued and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                job = self._queued.popleft()
                self._running = job
            self._execute(job)
            with self._lock:
                self._running = None
                self._finished[job.id] = None
                while len(self._finished) > self.keep:
                    old, _ = self._finished.popitem(last=False)
                    self._jobs.pop(old, None)
            job._done.set()

    def _execute(self, job: Job) -> None:
        job.started = time.time()
        job.status = "running"
        try:
            result = job.fn(job)
        except BaseException as exc:  # every failure is the job's, never the worker's
            job.error = one_line(exc)
            if isinstance(exc, KneuronError):  # kept for run() to re-raise; its frames (tensors) are not
                job.exception = exc.with_traceback(None)
            else:
                logger.error("probe job %s (%s) failed", job.id, job.kind, exc_info=exc)
            job.status = "failed"
        else:
            job.result = result
            job.status = "done"
        finally:
            job.finished = time.time()
            job.fn = None  # type: ignore[assignment]  # the closure may hold large inputs

    # ------------------------------------------------------------------------------------------------ closing

    def close(self, timeout: float | None = None) -> None:
        """Stop taking jobs, fail the queued ones ("cancelled"), let the running one finish and wait for the worker
        (at most ``timeout`` seconds; it is a daemon thread, so it never keeps the process alive). Idempotent."""
        with self._wake:
            self._closed = True
            cancelled = list(self._queued)
            self._queued.clear()
            self._wake.notify_all()
        for job in cancelled:
            job.status, job.error, job.finished = "failed", "cancelled: the probe queue was closed", time.time()
            job.fn = None  # type: ignore[assignment]
            job._done.set()
        if self._worker is not threading.current_thread():
            self._worker.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> ProbeQueue:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
