"""Chunks of facts on Ray actors that each load the model once; the driver stays the atlas's only writer.

What holds on a cluster, by construction:

* **One model per worker.** Each actor loads the model once, from the id or path the driver gives (a hub id,
  a local folder every node can read, a .gguf file or an embedded name), on its own device, and checks that its
  model's identity (weights fingerprint, family, kind, shape, dtype) equals the atlas's; it refuses otherwise.
  A worker with ``gpus_per_worker > 0`` gets its GPU(s) from Ray (``num_gpus``) and loads the model on
  ``cuda``; Ray sets ``CUDA_VISIBLE_DEVICES`` so each worker sees only its own.
* **No shared state but the driver.** Workers get a chunk (its facts and the run's params) and return the
  chunk's results; only the driver writes the atlas, one transaction per fact, as results arrive.
* **Bounded memory.** At most ``in_flight`` chunks per worker are submitted at a time, and the driver writes a
  result before it asks for more, so at most ``workers x in_flight`` chunks of results exist at once, however
  large the dataset.
* **Same results.** Chunks are cut by the atlas's fact order (:mod:`kneuron.store.chunks`), never by timing, and
  a worker computes a chunk exactly as the local executor does, so any number of workers writes the same atlas
  byte for byte (on CPU; on CUDA give ``memory_budget`` explicitly, since the default budget follows each
  device's free memory and so may batch differently).
* **Faults.** A worker that dies mid-chunk (SIGKILL, node lost) has its unfinished chunks sent again to a new
  worker; none is lost, and none is stored twice (a chunk's result is written once, when it arrives). A driver
  killed at any moment loses nothing stored: the same command resumes (:func:`kneuron.store.run`).
* **Clear errors, no hang.** Ray not installed, an address nothing listens on, a worker that cannot load the
  model or has another model, workers that cannot be placed (too few CPUs or GPUs) within ``start_timeout``:
  each is one :class:`KneuronError`. So is a run that stops making progress: the cluster has no live node left
  (a raylet or its DashboardAgent killed: the raylet dies with its agent, and its workers with it), the local
  raylet kneuron started is gone, a dead worker's replacement does not start, or no chunk came back for
  ``stall_timeout`` seconds (``--stall-timeout``). The message says what happened and that the same command
  resumes: every fact stored before stays stored.
* **A cluster kneuron starts ends with it.** ``ray.shutdown()`` on every exit Python sees (the end, an exception,
  KeyboardInterrupt, and SIGTERM, turned into ``SystemExit(143)`` while the run holds the cluster), bounded in
  time, then whatever is left of the cluster's processes is killed; a SIGKILLed driver's cluster is ended by a
  watchdog (:mod:`kneuron.parallel.ray_processes`, which says what holds where).
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from kneuron.errors import KneuronError
from kneuron.parallel import ray_processes
from kneuron.store.chunks import Chunk, ChunkResult, LocalExecutor

#: identity entries a worker's model must share with the atlas (the model's name may differ: id vs path)
CHECKED = ("fingerprint", "family", "kind", "n_layers", "n_neurons", "dtype")
#: default seconds without any chunk coming back after which a run is ended as stalled
STALL_TIMEOUT = 600.0
#: how often (seconds) the driver looks at the cluster's health while it waits for a chunk
POLL = 1.0
#: seconds ``ray.shutdown()`` may take before the leftovers of a cluster kneuron started are killed
SHUTDOWN_TIMEOUT = 20.0
RESUME = "The facts stored so far are kept: run the same command again to resume."


def _bounded(call, timeout: float):
    """``call()``'s result, or TimeoutError when it has not returned within ``timeout`` seconds (a Ray call to a
    cluster that lost its processes can block for good; the thread is a daemon and is left behind)."""
    box: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            box.append(call())
        except BaseException as exc:  # handed to the caller
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError
    if errors:
        raise errors[0]
    return box[0]


def _terminated(_signum, _frame) -> None:
    raise SystemExit(128 + signal.SIGTERM)  # unwinds through the executor's finally: the cluster is shut down


class _Worker:
    """The actor: loads the model once, checks its identity, computes chunks. Errors come back as values from
    :meth:`ready`, so the driver reports them instead of waiting on a dead actor."""

    def __init__(self, model: str | None, device: str, identity: dict[str, Any], threads: int,
                 memory_budget: int | None) -> None:
        import torch

        torch.set_num_threads(threads)
        self.error: str | None = None
        self.lm = None
        self.memory_budget = memory_budget
        try:
            from transformers.utils import logging as hf_logging

            from kneuron.models import load
            from kneuron.models.identity import model_identity

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
            self.lm = load(model, device=device)
            mine = model_identity(self.lm)
            wrong = [f"{key} {mine[key]!r} (atlas {identity.get(key)!r})" for key in CHECKED
                     if mine[key] != identity.get(key)]
            if wrong:
                self.error = (f"the worker's model {model or 'smollm2-135m'!r} is not the atlas's model: "
                              + ", ".join(wrong) + ". Give every worker the same model id or path as the driver.")
        except Exception as exc:  # reported to the driver as one line
            self.error = f"a worker could not load the model {model or 'smollm2-135m'!r}: {exc}"

    def ready(self) -> tuple[int, str | None]:
        return os.getpid(), self.error

    def compute(self, chunk: Chunk, params: dict[str, Any]) -> ChunkResult:
        from kneuron.store.chunks import compute_chunk

        result = compute_chunk(self.lm, chunk, params, self.memory_budget)
        result.worker = f"pid {os.getpid()}"
        return result


def _ray():
    try:
        import ray
    except ImportError:
        raise KneuronError("The Ray executor needs Ray, which is not installed: pip install 'kneuron[ray]' "
                           "(or use --executor local).") from None
    return ray


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast when nothing listens at ``host:port`` (ray.init would wait and retry for minutes)."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise KneuronError(f"Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379, ray://head:10001, or auto).")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise KneuronError(f"No Ray cluster reachable at {address} ({exc}). Start one there (ray start --head) "
                           "or give the head node's address with --ray-address.") from None


class RayExecutor:
    """Chunks on ``workers`` Ray actors (see the module docstring for what holds on a cluster).

    Args:
        model: what each worker loads (:func:`kneuron.load`'s argument): the same id or path the driver used.
        workers: actors (each loads the model once).
        address: a running cluster ("host:port", "ray://host:port", "auto"); None starts a local Ray (or joins
            the one this process already started).
        device: the workers' torch device; "cuda" when ``gpus_per_worker > 0`` and the device is "cpu".
        gpus_per_worker: the GPUs Ray reserves per actor (a fraction allowed).
        cpus_per_worker: the CPUs Ray reserves per actor.
        threads: torch threads per worker (default: ``cpus_per_worker``).
        memory_budget: bytes per IG batch (default: attribution's, which on CUDA follows the free memory).
        in_flight: chunks submitted per worker at a time (2 keeps a worker busy while its result travels).
        start_timeout: seconds the workers have to start and load the model.
        stall_timeout: seconds without any chunk coming back (and for a dead worker's replacement to start)
            after which the run ends with a KneuronError that says how to resume; longer than one chunk takes.
        on_result: called with each chunk result as it arrives (before it is handed to the writer).
    """

    def __init__(self, model: str | None, *, workers: int = 2, address: str | None = None, device: str = "cpu",
                 gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0, threads: int | None = None,
                 memory_budget: int | None = None, in_flight: int = 2, start_timeout: float = 300.0,
                 stall_timeout: float = STALL_TIMEOUT,
                 on_result: Callable[[ChunkResult], None] | None = None) -> None:
        ray = _ray()  # Ray missing: fail now, before the run writes anything
        if workers < 1:
            raise KneuronError(f"workers must be at least 1; got {workers}.")
        cpus = os.cpu_count() or 1
        if address in (None, "local") and not ray.is_initialized() and workers * cpus_per_worker > cpus:
            # the local Ray this would start has os.cpu_count() CPUs: more workers could never all be placed
            raise KneuronError(f"workers={workers:,} of {cpus_per_worker:g} CPU each need more than the {cpus} CPUs "
                               f"a local Ray gets here: give at most {max(1, int(cpus // cpus_per_worker))} workers "
                               "(or join a larger cluster with --ray-address).")
        if not (isinstance(stall_timeout, (int, float)) and stall_timeout > 0 and stall_timeout < float("inf")):
            raise KneuronError(f"stall_timeout must be a number of seconds above 0; got {stall_timeout!r}.")
        if gpus_per_worker < 0 or cpus_per_worker <= 0:
            raise KneuronError("gpus_per_worker must be >= 0 and cpus_per_worker > 0.")
        self.model = model
        self.workers = workers
        self.address = address
        self.device = "cuda" if gpus_per_worker > 0 and device == "cpu" else device
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        self.threads = threads or max(1, int(cpus_per_worker))
        self.memory_budget = memory_budget
        self.in_flight = max(1, in_flight)
        self.start_timeout = start_timeout
        self.stall_timeout = float(stall_timeout)
        self.on_result = on_result
        self.name = f"ray x{workers}"
        #: chunks sent again after their worker died, and workers started to replace dead ones
        self.reruns = 0
        self.replaced = 0
        self._busy: dict[int, list[int]] = {}
        self._watchdog: ray_processes.Watchdog | None = None
        self._cluster: list[ray_processes.Identity] = []  # the processes of a cluster this executor started
        self._raylets: set[ray_processes.Identity] = set()  # its raylet(s): gone, the node and its workers are

    def busy(self) -> dict[int, list[int]]:
        """Worker pid -> numbers of the chunks submitted to it and not yet returned."""
        return {pid: list(numbers) for pid, numbers in self._busy.items()}

    def _connect(self, ray) -> bool:
        """Start or join Ray; True when this call started it (and so shuts it down)."""
        if ray.is_initialized():
            return False
        if self.address not in (None, "auto", "local"):
            _reachable(self.address)
        local = self.address in (None, "local")
        if local:
            self._watchdog = ray_processes.Watchdog()  # before ray.init: a SIGKILL right after it is covered too
        try:
            ray.init(address=self.address, log_to_driver=False, include_dashboard=False,
                     configure_logging=False)
        except ConnectionError as exc:
            self._stop_watchdog()
            raise KneuronError(f"Could not join the Ray cluster at {self.address or 'auto'}: {exc}") from None
        except Exception as exc:  # a local head that cannot start (memory, ports, a stale session)
            self._stop_watchdog()
            raise KneuronError(f"Could not {'start a local Ray' if local else 'join the Ray cluster at '}"
                               f"{'' if local else self.address}: {str(exc).strip().splitlines()[-1]}") from None
        self._report()
        return True

    def _report(self) -> None:
        """Record (and tell the watchdog) the processes of the local cluster this executor started."""
        if self._watchdog is not None:
            self._cluster = sorted(set(self._cluster) | set(self._watchdog.report()))
            self._raylets |= {p for p in self._cluster if "raylet/raylet" in ray_processes.command_line(p[0])}

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None

    def _shutdown(self, ray) -> None:
        """``ray.shutdown()`` bounded in time, then the local cluster's leftovers killed (agents, workers)."""
        with contextlib.suppress(Exception):
            _bounded(ray.shutdown, SHUTDOWN_TIMEOUT)
        ray_processes.end(self._cluster)
        self._cluster, self._raylets = [], set()
        self._stop_watchdog()

    def _check_cluster(self, ray) -> None:
        """Refuse to go on with a cluster that has lost what the run needs: the local raylet kneuron started, or
        every node (a node whose raylet or DashboardAgent died is marked dead)."""
        for pid, start in self._raylets:
            if not ray_processes.alive((pid, start)):
                raise KneuronError(f"The local Ray node's raylet (pid {pid}) is gone (killed, out of memory, or its "
                                   f"DashboardAgent died), and its workers with it. {RESUME}")
        try:
            nodes = _bounded(ray.nodes, 10.0)
        except TimeoutError:
            raise KneuronError(f"The Ray cluster stopped answering (no node list within 10 s): its head node may be "
                               f"gone. {RESUME}") from None
        except Exception:  # noqa: S110 - a transient failure to list nodes is not a verdict
            return
        if not any(node.get("Alive") for node in nodes):
            raise KneuronError(f"The Ray cluster has no live node left (a raylet or its DashboardAgent died, or "
                               f"the node was lost). {RESUME}")

    def _start(self, ray, actor_class, identity: dict[str, Any], count: int, *, replacing: bool = False,
               ) -> list[tuple[Any, int]]:
        """``count`` ready actors with their pids, or one clear error (never a wait past ``start_timeout``, nor,
        for a dead worker's replacement, past ``stall_timeout``)."""
        timeout = min(self.start_timeout, self.stall_timeout) if replacing else self.start_timeout
        actors = [actor_class.remote(self.model, self.device, identity, self.threads, self.memory_budget)
                  for _ in range(count)]
        refs = [actor.ready.remote() for actor in actors]
        try:
            answers = ray.get(refs, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            for actor in actors:
                ray.kill(actor)
            if replacing:
                raise KneuronError(f"A Ray worker died and its replacement did not start within {timeout:.0f} s: "
                                   f"the cluster may have lost its node or resources. {RESUME}") from None
            raise KneuronError(
                f"{count} Ray worker(s) did not start within {timeout:.0f} s: the cluster may lack the "
                f"resources asked for ({self.cpus_per_worker} CPU, {self.gpus_per_worker} GPU per worker; it has "
                f"{ray.cluster_resources()}), or loading the model takes longer (raise start_timeout).") from None
        except ray.exceptions.RayError as exc:
            for actor in actors:
                with contextlib.suppress(Exception):
                    _bounded(lambda actor=actor: ray.kill(actor), 5.0)
            self._check_cluster(ray)  # a lost node says so
            raise KneuronError(f"A Ray worker failed to start: {str(exc).splitlines()[0]}"
                               + (f" {RESUME}" if replacing else "")) from None
        errors = [error for _, error in answers if error]
        if errors:
            for actor in actors:
                ray.kill(actor)
            raise KneuronError(errors[0][0].upper() + errors[0][1:])
        self._report()  # the workers (and the agents) are up: the watchdog ends them with a SIGKILLed driver
        return [(actor, pid) for actor, (pid, _) in zip(actors, answers, strict=True)]

    def map(self, chunks: Iterable[Chunk], params: dict[str, Any], identity: dict[str, Any],
            on_prompt: Callable[[], None] | None = None) -> Iterator[ChunkResult]:
        """Each chunk's result as it comes back from a worker. ``on_prompt`` is never called: a worker attributes
        a chunk's prompts in its own process, so the run's progress counts them (``ChunkResult.prompts``) when the
        chunk's result arrives; with several workers, chunks arrive one after another as each finishes."""
        ray = _ray()
        started = self._connect(ray)
        previous = None
        if started and threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _terminated)  # SIGTERM unwinds here: the cluster is shut down
        options: dict[str, Any] = {"num_cpus": self.cpus_per_worker, "max_restarts": 0}
        if self.gpus_per_worker:
            options["num_gpus"] = self.gpus_per_worker
        actor_class = ray.remote(**options)(_Worker)
        workers: list[tuple[Any, int]] = []
        pending: dict[Any, tuple[Any, int, Chunk]] = {}
        source = iter(chunks)
        again: collections.deque[Chunk] = collections.deque()
        try:
            workers = self._start(ray, actor_class, identity, self.workers)
            load = {pid: 0 for _, pid in workers}
            self._busy = {pid: [] for _, pid in workers}
            exhausted = False
            while True:
                for actor, pid in workers:  # fill each worker up to in_flight chunks, retried chunks first
                    while load[pid] < self.in_flight:
                        chunk = again.popleft() if again else None
                        if chunk is None and not exhausted:
                            chunk = next(source, None)
                            exhausted = chunk is None
                        if chunk is None:
                            break
                        pending[actor.compute.remote(chunk, params)] = (actor, pid, chunk)
                        load[pid] += 1
                        self._busy[pid].append(chunk.number)
                if not pending:
                    return
                ref = self._next_ready(ray, pending)
                actor, pid, chunk = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError:
                    self._check_cluster(ray)  # a lost node is the end of the run, not a worker to replace
                    workers, load = self._replace(ray, actor_class, identity, workers, load, pid, pending, again)
                    again.appendleft(chunk)
                    self.reruns += 1
                    continue
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), KneuronError) else None
                    if cause is not None:
                        raise KneuronError(str(cause)) from None
                    raise KneuronError(f"A Ray worker failed on chunk {chunk.number}: "
                                       f"{str(exc).strip().splitlines()[-1]}") from None
                load[pid] -= 1
                self._busy[pid].remove(chunk.number)
                if self.on_result is not None:
                    self.on_result(result)
                yield result
        finally:
            for actor, _ in workers:
                with contextlib.suppress(Exception):
                    _bounded(lambda actor=actor: ray.kill(actor), 5.0)
            self._busy = {}
            if started:
                self._shutdown(ray)
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _next_ready(self, ray, pending: dict) -> Any:
        """The next finished chunk's ref, looking at the cluster's health every :data:`POLL` seconds; a
        KneuronError when the cluster lost what it needs or nothing has come back for ``stall_timeout``."""
        waited_since = time.monotonic()
        while True:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL)
            if ready:
                return ready[0]
            self._check_cluster(ray)
            waited = time.monotonic() - waited_since
            if waited >= self.stall_timeout:
                raise KneuronError(
                    f"The Ray run stopped making progress: no chunk came back for {waited:.0f} s (stall_timeout "
                    f"{self.stall_timeout:g} s) with {len(pending)} chunk(s) in flight. {RESUME} (Raise "
                    "--stall-timeout if one chunk can take longer.)")

    def _replace(self, ray, actor_class, identity, workers, load, dead: int, pending, again):
        """Drop the dead worker, send its other unfinished chunks again, and start a replacement."""
        lost = [ref for ref, (_, pid, _) in pending.items() if pid == dead]
        for ref in lost:
            again.append(pending.pop(ref)[2])
            self.reruns += 1
        workers = [(a, p) for a, p in workers if p != dead]
        load = {p: n for p, n in load.items() if p != dead}
        self._busy.pop(dead, None)
        if self.replaced >= 3 * self.workers:
            raise KneuronError(f"Ray workers keep dying ({self.replaced} replaced): see the Ray logs "
                               "(/tmp/ray/session_latest/logs) for why (out of memory?).")
        self.replaced += 1
        for actor, pid in self._start(ray, actor_class, identity, 1, replacing=True):
            workers.append((actor, pid))
            load[pid] = 0
            self._busy[pid] = []
        return workers, load


def make_executor(name: str, lm, *, model: str | None = None, address: str | None = None, workers: int = 2,
                  gpus_per_worker: float = 0.0, device: str = "cpu", memory_budget: int | None = None,
                  stall_timeout: float | None = None):
    """The executor ``--executor NAME`` stands for: "local" (this process, ``lm``) or "ray"."""
    if name == "local":
        if address or gpus_per_worker or stall_timeout is not None:
            raise KneuronError("--ray-address, --gpus-per-worker and --stall-timeout are options of --executor ray.")
        return LocalExecutor(lm, memory_budget)
    if name == "ray":
        return RayExecutor(model, workers=workers, address=address, gpus_per_worker=gpus_per_worker,
                           device=device, memory_budget=memory_budget,
                           stall_timeout=STALL_TIMEOUT if stall_timeout is None else stall_timeout)
    raise KneuronError(f"Unknown executor {name!r}: use local or ray.")

