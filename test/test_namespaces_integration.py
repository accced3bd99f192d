"""Two graphs under two namespaces in one ROS domain: each answers its own clients only, and
hola_ros.client reaches either one (stream, cancel, timeout)."""
import time

import pytest
from conftest import graph_params

from hola_ros.client import HolaClient
from hola_ros.local_graph import LocalGraph, default_domain_id, wait_future

pytestmark = pytest.mark.slow

ROBOT2_LIMIT = 4   # robot2's verifier refuses more new tokens than this: tells the graphs apart


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    started = []
    try:
        for ns, limit in (("robot1", 1024), ("robot2", ROBOT2_LIMIT)):
            params = graph_params(common={"telemetry_rate_hz": 5.0},
                                  verifier={"max_new_tokens_limit": limit, "use_retriever": False})
            started.append(LocalGraph(tmp_path_factory.mktemp(ns), params, default_domain_id(), namespace=ns,
                                      only="hola_verifier,hola_drafter"))
        for graph in started:
            graph.wait_active()
        yield started
    finally:
        for graph in started:
            graph.stop()


def collect_response_ids(node, namespace):
    from hola_ros.interfaces import RESPONSE, RESPONSE_QOS, resolve
    from hola_ros.msg import ResponseChunk

    ids = []
    sub = node.create_subscription(ResponseChunk, resolve(RESPONSE, namespace), lambda m: ids.append(m.request_id),
                                   RESPONSE_QOS)
    return ids, sub


def test_each_namespaced_graph_answers_only_its_own_clients(graphs):
    robot1, robot2 = graphs
    mine = HolaClient(robot1.node)                         # relative names: the node's namespace /robot1
    other = HolaClient(robot1.node, namespace="robot2")    # the same node asking the other graph
    ids1, sub1 = collect_response_ids(robot1.node, "robot1")
    ids2, sub2 = collect_response_ids(robot1.node, "robot2")
    assert mine.ask_service == "/robot1/hola/ask" and other.ask_service == "/robot2/hola/ask"
    services = {name for name, _types in robot1.node.get_service_names_and_types()}
    assert {"/robot1/hola/ask", "/robot2/hola/ask", "/robot1/hola/draft", "/robot2/hola/draft"} <= services
    assert "/hola/ask" not in services

    # the same request id in flight on both graphs at once: two graphs, two answers
    fields = dict(max_new_tokens=ROBOT2_LIMIT, retrieval_mode="off", request_id="shared-id", timeout_s=300)
    a1, a2 = mine.ask("Say hello to the operator.", **fields), other.ask("Say hello to the operator.", **fields)
    a1, a2 = wait_future(a1, 330), wait_future(a2, 330)
    assert a1.success and a2.success, (a1.error, a2.error)
    for answer in (a1, a2):  # each graph's own drafter served it
        assert answer.stats["decoding_mode"] == "hsd" and not answer.stats["degraded"], answer.stats

    over1 = wait_future(mine.ask("Say hello.", max_new_tokens=ROBOT2_LIMIT + 4, retrieval_mode="off"), 330)
    over2 = wait_future(other.ask("Say hello.", max_new_tokens=ROBOT2_LIMIT + 4, retrieval_mode="off"), 330)
    assert over1.success, over1.error
    assert not over2.success and f"above the limit of {ROBOT2_LIMIT}" in over2.error
    time.sleep(0.5)  # late chunks of the last answer
    assert over1.request_id in ids1 and over1.request_id not in ids2
    assert ids1.count("shared-id") == ids2.count("shared-id") >= 2  # text and final chunk on each graph's own topic
    for client, sub in ((mine, sub1), (other, sub2)):
        client.destroy()
        robot1.node.destroy_subscription(sub)


def test_status_telemetry_and_diagnostics_per_namespace(graphs):
    import json

    from diagnostic_msgs.msg import DiagnosticArray

    robot1, robot2 = graphs
    status = [json.loads(g.cli("status", "--wait", "--json", "--namespace", ns, "--only", "hola_verifier,hola_drafter",
                               "--timeout", "60").stdout)
              for g, ns in ((robot1, "robot1"), (robot2, "robot2"))]
    assert set(status[0]) == set(status[1]) == {"hola_verifier", "hola_drafter"}
    assert not {m["instance_id"] for m in status[0].values()} & {m["instance_id"] for m in status[1].values()}
    names = set()
    sub = robot1.node.create_subscription(DiagnosticArray, "/diagnostics",
                                          lambda m: names.update(s.name for s in m.status), 10)
    deadline = time.monotonic() + 10
    wanted = {f"hola_ros: {ns}/{n}" for ns in ("robot1", "robot2") for n in ("hola_verifier", "hola_drafter")}
    while not wanted <= names and time.monotonic() < deadline:
        time.sleep(0.1)
    robot1.node.destroy_subscription(sub)
    assert wanted <= names, names


def test_client_streams_deltas_and_cancel_ends_with_the_partial_text(graphs):
    robot1 = graphs[0]
    client = HolaClient(robot1.node)
    future = client.ask("Write a very long story about a warehouse robot.", max_new_tokens=400,
                        retrieval_mode="off", decoding_mode="ar", timeout_s=300)
    received = []
    for delta in future.deltas():  # the graph's executor thread spins the node meanwhile
        received.append(delta)
        if len(received) == 2:
            assert wait_future(client.cancel(future), 30).success
    answer = wait_future(future, 60)
    assert not answer.success and answer.error == "cancelled" and answer.stats["stop_reason"] == "cancelled"
    assert answer.text == "".join(received) and 2 <= len(received) and answer.stats["new_tokens"] < 400
    client.destroy()


def test_the_readme_example_node_asks_and_acts_on_the_answer(graphs, tmp_path):
    import re
    import subprocess
    import sys

    from hola_ros.local_graph import SOURCE_ROOT

    readme = (SOURCE_ROOT / "README.md").read_text()
    section = readme[readme.index("## Asking from robot code"):]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'namespace="robot1"' in example and len(example.splitlines()) <= 32
    script = tmp_path / "dock_finder.py"
    script.write_text(example)
    run = subprocess.run([sys.executable, str(script)], env=graphs[0].env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 0 and "answer (" in run.stderr and run.stdout.strip(), run.stdout + run.stderr
