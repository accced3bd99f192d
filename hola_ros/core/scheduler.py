"""Bounded request queue with a fixed number of workers, cancel, and exactly one outcome per job."""
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from hola_ros.core.requests import RequestError


class Busy(RuntimeError):
    """The queue is full: the request was not accepted."""


@dataclass
class Outcome:
    success: bool
    error: str = ""
    text: str = ""
    stats: dict = field(default_factory=dict)
    tool_calls: list = field(default_factory=list)  # tools.ToolCall of a tool-call answer


class Job:
    def __init__(self, request, on_block: Callable[[list[int], str], None] | None = None):
        self.request = request
        self.on_block = on_block
        self.submitted_at = time.monotonic()
        self.started_at: float | None = None
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._outcome: Outcome | None = None
        self._lock = threading.Lock()

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def finish(self, outcome: Outcome) -> bool:
        """Record the outcome once; later calls are ignored (returns False)."""
        with self._lock:
            if self._outcome is not None:
                return False
            self._outcome = outcome
        self._done.set()
        return True

    def wait(self, timeout: float | None = None) -> Outcome | None:
        self._done.wait(timeout)
        return self._outcome

    @property
    def done(self) -> bool:
        return self._done.is_set()


class Scheduler:
    """`handle(job) -> Outcome` runs on `concurrency` worker threads; at most `queue_size` jobs wait."""

    def __init__(self, handle: Callable[[Job], Outcome], queue_size: int, concurrency: int,
                 on_finished: Callable[[Job, Outcome], Any] | None = None):
        if queue_size < 0 or concurrency < 1:
            raise ValueError("queue_size must be >= 0 and concurrency >= 1")
        self._handle = handle
        self._on_finished = on_finished
        self._queue_size = queue_size
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: dict[str, Job] = {}
        self._cv = threading.Condition()
        self._stopping = False
        self.served = self.failed = self.rejected = 0
        self._workers = [threading.Thread(target=self._work, name=f"hola-worker-{i}", daemon=True)
                         for i in range(concurrency)]
        for worker in self._workers:
            worker.start()

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._running)

    def set_queue_size(self, queue_size: int) -> None:
        """A new bound for later submissions; jobs already queued beyond it stay queued."""
        if queue_size < 0:
            raise ValueError("queue_size must be >= 0")
        with self._cv:
            self._queue_size = queue_size

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping:
                self.rejected += 1
                raise Busy("the verifier is shutting down")
            if job.request_id in self._running or any(j.request_id == job.request_id for j in self._waiting):
                self.rejected += 1
                raise RequestError(f"request id {job.request_id!r} is already in flight")
            if len(self._waiting) + len(self._running) >= self._queue_size + len(self._workers):
                self.rejected += 1
                raise Busy(f"busy: {len(self._running)} running and {len(self._waiting)} queued "
                           f"(queue_size {self._queue_size}); try again later")
            self._waiting.append(job)
            self._cv.notify()

    def cancel(self, request_id: str) -> bool:
        """Cancel a queued or running job; False when no such job is in flight."""
        with self._cv:
            for job in self._waiting:
                if job.request_id == request_id:
                    self._waiting.remove(job)
                    job.cancel()
                    self._finish(job, Outcome(False, "cancelled while queued", stats={"stop_reason": "cancelled"}))
                    return True
            job = self._running.get(request_id)
        if job is None:
            return False
        job.cancel()
        return True

    def stop(self, reason: str, timeout: float = 30.0) -> None:
        """Fail every queued job with `reason`, cancel running ones and wait for the workers."""
        with self._cv:
            self._stopping = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            running = list(self._running.values())
            self._cv.notify_all()
        for job in waiting:
            job.cancel()
            self._finish(job, Outcome(False, reason, stats={"stop_reason": "cancelled"}))
        for job in running:
            job.cancel()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def _finish(self, job: Job, outcome: Outcome) -> None:
        if job.finish(outcome):
            if outcome.success:
                self.served += 1
            else:
                self.failed += 1
            if self._on_finished is not None:
                self._on_finished(job, outcome)

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._stopping:
                    self._cv.wait()
                if self._stopping and not self._waiting:
                    return
                job = self._waiting.popleft()
                self._running[job.request_id] = job
            job.started_at = time.monotonic()
            try:
                outcome = self._handle(job)
            except Exception as exc:  # a failing request must not take the worker down
                outcome = Outcome(False, f"internal error: {type(exc).__name__}: {exc}", stats={"stop_reason": "error"})
            with self._cv:
                self._running.pop(job.request_id, None)
            self._finish(job, outcome)
