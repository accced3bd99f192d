"""Split deployment over DDS: the drafter in a "robot" network namespace, the verifier in an
"edge" one, joined by a link with 5 ms delay and 1 % loss each way (hola_ros.netsplit), Fast DDS
tuned for it (config/fastdds_lossy_link.xml). An answer crosses the link; cutting it mid-answer
fails the robot's client clearly and in bounded time, and the same node processes serve again
once it is back. Skips where network namespaces cannot be made (not root). `hola-ros
bench-split` measures the full graph this way."""
import pytest
from conftest import graph_params

from hola_ros.local_graph import default_domain_id
from hola_ros.netsplit import (LinkShape, NetnsUnavailable, SplitGraph, SplitNetwork, link_cut_trial,
                               lossy_link_profile)

pytestmark = pytest.mark.slow

LIVENESS_S = 3.0


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    net = SplitNetwork(LinkShape(delay_ms=5.0, loss_pct=1.0))
    try:
        net.__enter__()
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))
    graph = None
    try:
        params = graph_params(common={"telemetry_rate_hz": 5.0}, verifier={"use_retriever": False})
        graph = SplitGraph(net, tmp_path_factory.mktemp("split"), params, ["hola_drafter"], ["hola_verifier"],
                           default_domain_id(), lossy_link_profile())
        graph.wait_active(300)
        yield net, graph
    finally:
        if graph is not None:
            graph.stop()
        net.close()


def test_an_answer_crosses_the_link_between_robot_and_edge(split):
    net, graph = split
    before = net.counters()
    answer = graph.ask_json("Say hello to the operator.", "--max-new-tokens", "12", "--retrieval", "off")
    after = net.counters()
    assert answer["success"], answer["error"]
    assert answer["stats"]["new_tokens"] > 0 and answer["stats"]["decoding_mode"] == "hsd"
    # the client and the drafter are on the robot, the verifier only behind the link
    assert after["tx_packets"] > before["tx_packets"] and after["rx_packets"] > before["rx_packets"]


def test_link_cut_mid_answer_fails_the_client_clearly_then_the_same_graph_serves_again(split):
    net, graph = split
    result = link_cut_trial(net, graph, liveness_s=LIVENESS_S, timeout_s=120.0)
    assert result["streaming_before_cut"], result
    # the client gave up while the link was still down (it is restored only after), with the reason
    assert result["client_exit_code"] == 1 and "verifier went away" in result["client_error"], result
    assert result["served_again"], result["again"]
    assert result["same_processes"], "a node restarted"
