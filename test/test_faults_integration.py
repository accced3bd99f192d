"""Faults and load on the real node graph: a burst beyond the queue, cancel by id, invalid
run-time parameters, and the verifier killed under a waiting client."""
import os
import signal
import threading
import time

import psutil
import pytest
from conftest import graph_params, run_graph_for_module

from hola_ros.local_graph import wait_future

pytestmark = pytest.mark.slow

QUEUE_SIZE = 4
PARAMS = graph_params(common={"telemetry_rate_hz": 5.0}, verifier={"queue_size": QUEUE_SIZE, "concurrency": 1},
                      retriever={"gate_model": ""})


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    yield from run_graph_for_module(tmp_path_factory, "faults", PARAMS)


class ThreadSampler:
    """Peak thread count of a process while sampling."""

    def __init__(self, pid: int):
        self._process, self._stop, self.peak = psutil.Process(pid), threading.Event(), 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._process.num_threads())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def test_burst_of_50_requests_every_one_answered_accepted_ones_streamed_no_thread_per_request(graph):
    from rclpy.qos import QoSProfile

    from hola_ros.interfaces import RESPONSE_QOS
    from hola_ros.msg import ResponseChunk
    from hola_ros.nodes.base import EXECUTOR_THREADS
    from hola_ros.srv import Ask

    done_chunks = []
    sub = graph.node.create_subscription(ResponseChunk, "/hola/response",
                                         lambda m: done_chunks.append(m.request_id) if m.done else None, RESPONSE_QOS)
    client = graph.node.create_client(Ask, "/hola/ask", qos_profile=QoSProfile(depth=200))
    assert client.wait_for_service(timeout_sec=60)
    time.sleep(1.5)
    warm = wait_future(client.call_async(Ask.Request(prompt="Say hi.", max_new_tokens=4, retrieval_mode="off")), 300)
    assert warm.success, warm.error
    verifier = psutil.Process(graph.node_pids()["hola_verifier"])
    before = verifier.num_threads()
    sampler = ThreadSampler(verifier.pid)
    futures = [client.call_async(Ask.Request(prompt=f"Count to three, request {i}.", request_id=f"burst-{i}",
                                             max_new_tokens=6, retrieval_mode="off")) for i in range(50)]
    responses = [wait_future(f, 300) for f in futures]
    peak = sampler.stop()
    accepted = [r for r in responses if r.success]
    busy = [r for r in responses if not r.success]
    assert len(accepted) + len(busy) == 50
    assert QUEUE_SIZE + 1 <= len(accepted) < 50, len(accepted)
    assert all("busy" in r.error for r in busy), {r.error for r in busy}
    assert all(r.text and r.stats.new_tokens >= 1 for r in accepted)
    deadline = time.monotonic() + 10
    while len(done_chunks) < len(accepted) + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(done_chunks) == sorted([warm.request_id] + [r.request_id for r in accepted])  # one final chunk each
    graph.node.destroy_subscription(sub)
    # waiting requests hold no thread: at most the executor's idle threads start (one thread per
    # queued or running request would add QUEUE_SIZE + 1)
    assert peak - before <= EXECUTOR_THREADS - 1 < QUEUE_SIZE + 1, (before, peak)


def test_cancel_by_request_id_queued_running_and_unknown(graph):
    from hola_ros.srv import Ask, Cancel

    ask = graph.node.create_client(Ask, "/hola/ask")
    cancel = graph.node.create_client(Cancel, "/hola/cancel")
    assert ask.wait_for_service(timeout_sec=60) and cancel.wait_for_service(timeout_sec=60)
    unknown = wait_future(cancel.call_async(Cancel.Request(request_id="nobody")), 30)
    assert not unknown.success and "no request with id 'nobody'" in unknown.error

    running = ask.call_async(Ask.Request(prompt="Write a long story about a robot.", request_id="long-1",
                                        max_new_tokens=400, retrieval_mode="off", decoding_mode="ar"))
    time.sleep(1.0)
    queued = ask.call_async(Ask.Request(prompt="Write another long story.", request_id="long-2",
                                        max_new_tokens=400, retrieval_mode="off"))
    time.sleep(0.5)
    assert wait_future(cancel.call_async(Cancel.Request(request_id="long-2")), 30).success
    assert wait_future(cancel.call_async(Cancel.Request(request_id="long-1")), 30).success
    q, r = wait_future(queued, 120), wait_future(running, 120)
    assert not q.success and q.error == "cancelled while queued"
    assert not r.success and r.error == "cancelled" and r.stats.stop_reason == "cancelled"
    assert r.stats.new_tokens < 400


def test_invalid_runtime_parameters_are_refused_valid_ones_apply(graph):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    from hola_ros.srv import Ask, Cancel

    client = graph.node.create_client(SetParameters, "/hola_verifier/set_parameters")
    assert client.wait_for_service(timeout_sec=30)

    def set_int(name, value):
        p = Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value))
        return wait_future(client.call_async(SetParameters.Request(parameters=[p])), 30).results[0]

    refused = set_int("queue_size", -1)
    assert not refused.successful and "queue_size" in refused.reason
    refused = set_int("threads", 1)  # load-time: refused while active, with the way to apply it
    assert not refused.successful and "deactivate it" in refused.reason
    assert set_int("max_new_tokens_limit", 16).successful
    ask = graph.node.create_client(Ask, "/hola/ask")
    over = wait_future(ask.call_async(Ask.Request(prompt="hi", max_new_tokens=32, retrieval_mode="off")), 60)
    assert not over.success and "above the limit of 16" in over.error
    assert set_int("max_new_tokens_limit", 1024).successful

    # queue_size applies live: with 0, one request decodes and the others are told busy at once
    assert set_int("queue_size", 0).successful
    futures = [ask.call_async(Ask.Request(prompt="Write a long story about a robot.", request_id=f"q0-{i}",
                                          max_new_tokens=400, retrieval_mode="off", decoding_mode="ar"))
               for i in range(3)]
    deadline = time.monotonic() + 60
    while sum(f.done() for f in futures) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    busy = [f.result() for f in futures if f.done()]
    assert len(busy) == 2 and all("busy" in r.error and "queue_size 0" in r.error for r in busy), busy
    (running,) = [i for i, f in enumerate(futures) if not f.done()]
    cancel = graph.node.create_client(Cancel, "/hola/cancel")
    assert wait_future(cancel.call_async(Cancel.Request(request_id=f"q0-{running}")), 30).success
    assert wait_future(futures[running], 120).error == "cancelled"
    assert set_int("queue_size", QUEUE_SIZE).successful


def test_an_answer_is_sent_when_its_job_ends_not_at_the_next_executor_wake_up(graph):
    """The handler awaiting a job resumes when a worker completes it, also when nothing else
    wakes the verifier's executor (telemetry slowed to one message per 20 s here)."""
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    from hola_ros.srv import Ask

    params = graph.node.create_client(SetParameters, "/hola_verifier/set_parameters")
    assert params.wait_for_service(timeout_sec=30)

    def set_rate(hz):
        value = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=hz)
        request = SetParameters.Request(parameters=[Parameter(name="telemetry_rate_hz", value=value)])
        return wait_future(params.call_async(request), 30).results[0].successful

    ask = graph.node.create_client(Ask, "/hola/ask")
    assert set_rate(0.05)
    try:
        time.sleep(1.0)
        started = time.monotonic()
        answer = wait_future(ask.call_async(Ask.Request(prompt="Say hi.", max_new_tokens=2, retrieval_mode="off")), 60)
        waited = time.monotonic() - started
    finally:
        assert set_rate(5.0)
    assert answer.success, answer.error
    assert waited - answer.stats.total_s < 10.0, (waited, answer.stats.total_s)  # not the 20 s telemetry period


def test_verifier_killed_under_a_waiting_client_fails_explicitly_then_respawns(graph):
    from hola_ros.interfaces import TELEMETRY_QOS
    from hola_ros.msg import Telemetry

    pid = graph.node_pids()["hola_verifier"]
    result = {}
    busy = threading.Event()
    sub = graph.node.create_subscription(
        Telemetry, "/hola/telemetry",
        lambda m: busy.set() if m.node == "hola_verifier" and m.active_requests > 0 else None, TELEMETRY_QOS)

    def ask():
        result["run"] = graph.cli("ask", "Write a very long story about a robot.", "--max-new-tokens", "400",
                                  "--retrieval", "off", "--mode", "ar", "--json", "--timeout", "120")

    thread = threading.Thread(target=ask)
    thread.start()
    assert busy.wait(60), "the CLI's request never started decoding"
    os.kill(pid, signal.SIGKILL)
    graph.node.destroy_subscription(sub)
    thread.join(150)
    run = result["run"]
    assert run.returncode == 1 and "went away" in run.stdout, run.stdout + run.stderr

    deadline = time.monotonic() + 180
    while graph.node_pids().get("hola_verifier") in (None, pid):
        assert time.monotonic() < deadline, "verifier was not respawned"
        time.sleep(0.5)
    again = graph.cli("ask", "Say hello.", "--max-new-tokens", "6", "--retrieval", "off", "--json", "--timeout", "180")
    assert again.returncode == 0, again.stdout + again.stderr
