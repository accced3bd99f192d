"""hola_ros.client without a graph: bad calls refused at once, a missing graph answered with a
clear timeout (also when the node's executor is already waiting), destroy answers what is pending."""
import threading

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor

from hola_ros.client import HolaClient
from hola_ros.local_graph import wait_future


@pytest.fixture
def spinning_node():
    """A node in an empty domain, spun in a background thread (as robot code would)."""
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=229)
    node = rclpy.create_node("client_test", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield node
    executor.shutdown(timeout_sec=2)
    node.destroy_node()
    rclpy.try_shutdown(context=context)
    thread.join(5)


def test_bad_calls_are_refused_with_the_reason(spinning_node):
    client = HolaClient(spinning_node)
    with pytest.raises(TypeError, match="unknown Ask field"):
        client.ask("hi", max_tokens=3)
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        client.ask("hi", timeout_s=0)
    client.ask("hi", request_id="one", timeout_s=30)
    with pytest.raises(ValueError, match="already pending"):
        client.ask("hi", request_id="one", timeout_s=30)
    client.destroy()


def test_no_graph_is_a_clear_timeout_even_with_the_executor_already_waiting(spinning_node):
    client = HolaClient(spinning_node, namespace="robot9")
    answer = wait_future(client.ask("hi", timeout_s=1.5), 30)
    assert not answer.success and answer.timed_out and answer.chunks == 0
    assert "service /robot9/hola/ask not available within 1.5 s" in answer.error
    client.destroy()


def test_destroy_answers_a_pending_request(spinning_node):
    client = HolaClient(spinning_node)
    future = client.ask("hi", timeout_s=60)
    threading.Timer(0.2, client.destroy).start()
    answer = wait_future(future, 30)
    assert not answer.success and "destroyed" in answer.error
    assert list(future.deltas()) == []
