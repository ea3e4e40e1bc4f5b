"""The probe queue: one worker, in order, bounded; errors in one line; the model's weights untouched."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import torch

from kneuron.errors import JobFailed, JobTimeout, KneuronError, ProbeInputError, QueueClosed, QueueFull
from kneuron.models.hooks import on_ffn_input, patch, suppress_patches
from kneuron.serve.jobs import ProbeQueue
from kneuron.serve.probes import probe
from tiny_models import tiny_lm

WAIT = 30.0  # seconds a test waits at most for something that takes milliseconds (never reached when it works)


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama", dtype=torch.float64, layers=3)


@pytest.fixture
def queue(lm):
    with ProbeQueue(lm) as q:
        yield q


def blocker(queue: ProbeQueue) -> tuple[threading.Event, threading.Event]:
    """Occupy the worker until ``release`` is set; ``running`` is set once the worker is inside."""
    running, release = threading.Event(), threading.Event()

    def hold(_job):
        running.set()
        assert release.wait(WAIT)

    queue.submit("hold", hold)
    assert running.wait(WAIT)
    return running, release


def test_jobs_run_one_at_a_time_in_order_on_one_thread(queue):
    spans: list[tuple[int, float, float, int]] = []

    def job_fn(number):
        def run(_job):
            start = time.perf_counter()
            time.sleep(0.005)
            spans.append((number, start, time.perf_counter(), threading.get_ident()))
            return number * number
        return run

    running, release = blocker(queue)  # everything below is queued before the first runs
    jobs = [queue.submit("square", job_fn(n)) for n in range(12)]
    assert all(job.status == "queued" for job in jobs)
    release.set()
    assert all(job.wait(WAIT) for job in jobs)
    assert [job.result for job in jobs] == [n * n for n in range(12)]
    assert [number for number, *_ in spans] == list(range(12))  # FIFO
    assert all(earlier[2] <= later[1] for earlier, later in zip(spans, spans[1:], strict=False))  # no overlap
    assert len({ident for *_, ident in spans}) == 1 and spans[0][3] != threading.get_ident()
    assert all(job.created <= job.started <= job.finished for job in jobs)
    assert all(jobs[i].finished <= jobs[i + 1].started for i in range(len(jobs) - 1))


def test_queue_full_at_max_pending(lm):
    with ProbeQueue(lm, max_pending=4) as queue:
        _, release = blocker(queue)  # 1 running
        waiting = [queue.submit("noop", lambda job: None) for _ in range(3)]  # 4 pending
        with pytest.raises(QueueFull, match="^4 probes are waiting; try again in a moment.$"):
            queue.submit("noop", lambda job: None)
        assert queue.pending() == 4
        release.set()
        assert all(job.wait(WAIT) for job in waiting)
        assert queue.submit("noop", lambda job: "again").wait(WAIT)  # room again


def test_keep_bounds_the_finished_jobs(lm):
    with ProbeQueue(lm, keep=3) as queue:
        jobs = [queue.submit("noop", lambda job, n=n: n) for n in range(10)]
        assert jobs[-1].wait(WAIT)  # set once the job is filed among the finished
        assert [queue.get(job.id) for job in jobs[:7]] == [None] * 7
        assert [queue.get(job.id).result for job in jobs[7:]] == [7, 8, 9]
        assert queue.get("0" * 16) is None


def test_progress_is_visible_while_the_job_runs(queue):
    reported, release = threading.Event(), threading.Event()

    def slow(job):
        job.set_progress(1, 3)
        reported.set()
        assert release.wait(WAIT)
        job.set_progress(3, 3)
        return "done"

    job = queue.submit("find", slow)
    assert reported.wait(WAIT)
    seen = queue.get(job.id)
    assert seen is job and (seen.status, seen.progress) == ("running", (1, 3))
    assert seen.as_dict(result=False)["progress"] == [1, 3]
    release.set()
    assert job.wait(WAIT) and (job.status, job.progress, job.result) == ("done", (3, 3), "done")


def test_a_failing_job_has_a_one_line_error_and_no_traceback(queue, caplog):
    def broken(_job):
        raise ValueError("secret internals\nline two")

    def refused(_job):
        raise KneuronError("The prompt is empty:\n  type some text.")

    with caplog.at_level(logging.ERROR, logger="kneuron.serve.jobs"):
        job = queue.submit("probe", broken)
        assert job.wait(WAIT)
    assert job.status == "failed" and job.error == "internal error: ValueError"
    assert "Traceback" in caplog.text and "secret internals" in caplog.text  # logged, not shown
    other = queue.submit("probe", refused)
    assert other.wait(WAIT) and other.error == "The prompt is empty: type some text."
    with pytest.raises(JobFailed, match="^internal error: ValueError$"):
        queue.run("probe", broken)
    with pytest.raises(KneuronError, match="^The prompt is empty"):
        queue.run("probe", refused)
    assert queue.run("probe", lambda job: 42) == 42  # the worker lives on


def test_run_times_out_but_the_job_finishes(queue):
    release = threading.Event()
    with pytest.raises(JobTimeout, match="still running") as caught:
        queue.run("find", lambda job: release.wait(WAIT) and "late", timeout=0.05)
    job = queue.get(caught.value.job_id)
    assert job.status == "running"
    release.set()
    assert job.wait(WAIT) and job.result == "late"


def test_close_is_idempotent_cancels_the_queued_and_refuses_more(lm):
    queue = ProbeQueue(lm)
    _, release = blocker(queue)
    queued = queue.submit("noop", lambda job: "never")
    threading.Timer(0.05, release.set).start()
    queue.close()
    queue.close()
    assert queued.wait(0) and queued.status == "failed" and "cancelled" in queued.error
    with pytest.raises(QueueClosed):
        queue.submit("noop", lambda job: None)


PROMPTS = ("The capital of Denmark is", "The capital city of France is", "Sweden's capital city is")


def request(number: int) -> tuple[str, str, list[tuple[int, int]]]:
    """A probe of its own per request number: prompt, answer and neurons."""
    prompt = PROMPTS[number % len(PROMPTS)]
    answer = ("Copenhagen", "Paris", "Stockholm")[number % len(PROMPTS)]
    return prompt, answer, [(number % 3, number % 32), ((number + 1) % 3, (7 * number) % 32)]


def test_concurrent_submitters_all_get_their_own_results(lm):
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    expected = [probe(lm, *request(n)) for n in range(24)]
    results: dict[int, dict] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(24)
    with ProbeQueue(lm, max_pending=24) as queue:
        def submitter(number: int) -> None:
            try:
                start.wait(WAIT)
                results[number] = queue.run("probe", lambda job: probe(job.lm, *request(number)), timeout=WAIT)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=submitter, args=(n,)) for n in range(24)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
    assert not errors
    assert [results[n] for n in range(24)] == expected  # bit for bit: the same passes, one at a time
    assert_same_weights(lm, state)


def assert_same_weights(lm, state: dict[str, torch.Tensor]) -> None:
    now = lm.model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[name], state[name]) for name in state)


def hook_counts(lm) -> list[int]:
    return [len(m._forward_pre_hooks) + len(m._forward_hooks) for m in lm.model.modules()]


def test_weights_and_hooks_survive_a_job_that_raises_inside_a_patch(lm):
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    hooks = hook_counts(lm)
    before = probe(lm, *request(5))

    def crash(_x):
        raise RuntimeError("inside the patched forward")

    def patched_then_crash(job):
        query_ids = torch.tensor([[2, 17, 60, 16, 100, 22]])
        with patch(job.lm, suppress_patches([(0, 3), (2, 5)]), positions=-1), on_ffn_input(job.lm, 1, crash):
            job.lm.model(input_ids=query_ids)

    with ProbeQueue(lm) as queue:
        with pytest.raises(JobFailed, match="RuntimeError"):
            queue.run("probe", patched_then_crash)
        with pytest.raises(ProbeInputError):
            queue.run("probe", lambda job: probe(job.lm, "The capital of Denmark is", "Copenhagen", [(9, 9)]))
        after = queue.run("probe", lambda job: probe(job.lm, *request(5)))
    assert after == before
    assert hook_counts(lm) == hooks
    assert_same_weights(lm, state)
