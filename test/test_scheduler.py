import threading
import time
from types import SimpleNamespace

import pytest

from hola_ros.core.requests import RequestError
from hola_ros.core.scheduler import Busy, Job, Outcome, Scheduler


def job(rid):
    return Job(SimpleNamespace(request_id=rid))


class Gate:
    """A handler that blocks until released (or cancelled), recording what it ran."""

    def __init__(self):
        self.release = threading.Event()
        self.started = []

    def __call__(self, j):
        self.started.append(j.request_id)
        while not self.release.is_set():
            if j.cancelled:
                return Outcome(False, "cancelled", stats={"stop_reason": "cancelled"})
            time.sleep(0.01)
        return Outcome(True, text=f"answer {j.request_id}")


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_bounded_queue_rejects_beyond_capacity_and_answers_every_accepted_job():
    gate = Gate()
    finished = []
    s = Scheduler(gate, queue_size=2, concurrency=1, on_finished=lambda j, o: finished.append((j.request_id, o)))
    jobs = [job(f"r{i}") for i in range(3)]
    for j in jobs:
        s.submit(j)
    with pytest.raises(Busy, match="busy"):
        s.submit(job("r3"))
    assert s.rejected == 1 and s.queue_depth + s.active == 3
    gate.release.set()
    outcomes = [j.wait(5) for j in jobs]
    assert [o.text for o in outcomes] == ["answer r0", "answer r1", "answer r2"]
    wait_for(lambda: len(finished) == 3)
    assert sorted(r for r, _ in finished) == ["r0", "r1", "r2"] and s.served == 3
    s.stop("bye")


def test_queue_size_change_applies_to_later_submissions_and_keeps_queued_jobs():
    gate = Gate()
    s = Scheduler(gate, queue_size=2, concurrency=1)
    jobs = [job(f"r{i}") for i in range(3)]
    for j in jobs:
        s.submit(j)
    s.set_queue_size(0)
    with pytest.raises(Busy, match="queue_size 0"):
        s.submit(job("late"))
    s.set_queue_size(3)
    s.submit(job("fits"))
    gate.release.set()
    assert all(j.wait(5).success for j in jobs)
    with pytest.raises(ValueError):
        s.set_queue_size(-1)
    s.stop("bye")


def test_duplicate_request_id_in_flight_is_refused():
    gate = Gate()
    s = Scheduler(gate, queue_size=4, concurrency=1)
    s.submit(job("same"))
    with pytest.raises(RequestError, match="already in flight"):
        s.submit(job("same"))
    gate.release.set()
    s.stop("bye")


def test_cancel_queued_and_running_and_unknown():
    gate = Gate()
    s = Scheduler(gate, queue_size=4, concurrency=1)
    running, queued = job("run"), job("wait")
    s.submit(running)
    s.submit(queued)
    wait_for(lambda: gate.started == ["run"])
    assert s.cancel("wait") and queued.wait(1).error == "cancelled while queued"
    assert s.cancel("run") and running.wait(5).stats["stop_reason"] == "cancelled"
    assert not s.cancel("nobody")
    assert gate.started == ["run"]  # the cancelled queued job never ran
    s.stop("bye")


def test_handler_exception_fails_only_that_job():
    calls = []

    def handler(j):
        calls.append(j.request_id)
        if j.request_id == "bad":
            raise RuntimeError("boom")
        return Outcome(True, text="ok")

    s = Scheduler(handler, queue_size=4, concurrency=1)
    bad, good = job("bad"), job("good")
    s.submit(bad)
    s.submit(good)
    assert "boom" in bad.wait(5).error and not bad.wait().success
    assert good.wait(5).success and s.failed == 1 and s.served == 1
    s.stop("bye")


def test_stop_fails_queued_jobs_and_refuses_new_ones():
    gate = Gate()
    s = Scheduler(gate, queue_size=4, concurrency=1)
    running, queued = job("a"), job("b")
    s.submit(running)
    s.submit(queued)
    wait_for(lambda: gate.started == ["a"])
    s.stop("shutting down", timeout=5)
    assert queued.wait(1).error == "shutting down"
    assert running.wait(1).stats["stop_reason"] == "cancelled"
    with pytest.raises(Busy):
        s.submit(job("c"))


def test_outcome_is_recorded_once():
    j = job("x")
    assert j.finish(Outcome(True, text="first"))
    assert not j.finish(Outcome(False, "second"))
    assert j.wait(0).text == "first"
