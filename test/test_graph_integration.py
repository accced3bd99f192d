"""The real three-process graph on the tiny offline model: ask, stream, telemetry, action
with feedback and cancel, bad input, clean shutdown."""
import json
import threading
import time

import pytest
from conftest import graph_params, run_graph_for_module

from hola_ros.local_graph import wait_future

pytestmark = pytest.mark.slow

PARAMS = graph_params(common={"telemetry_rate_hz": 4.0})


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    yield from run_graph_for_module(tmp_path_factory, "graph", PARAMS)


def collect(graph, msg_type, topic, qos=10):
    got = []
    sub = graph.node.create_subscription(msg_type, topic, got.append, qos)
    return got, sub


def test_ask_cli_streams_the_answer_and_prints_json(graph):
    result = graph.cli("ask", "Where does the robot go to charge its battery?", "--json", "--max-new-tokens", "48")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["success"] and out["error"] == "" and out["text"].strip()
    assert out["chunks"] >= 2  # at least one text chunk and the final one
    stats = out["stats"]
    assert 0 < stats["new_tokens"] <= 48 and stats["decoding_mode"] == "hsd" and stats["target_forwards"] >= 1
    assert not stats["degraded"] and stats["retrieval_level"] in (0, 1, 2)
    # each passage reports what it spent of the context budget
    assert sum(p["tokens"] for p in stats["sources"]) == stats["context_tokens"]
    assert all(p["tokens"] > 0 for p in stats["sources"])
    assert stats["tokens_per_s"] > 0 and stats["total_s"] >= stats["queue_s"] >= 0


def test_service_answer_equals_streamed_chunks(graph):
    from hola_ros.msg import ResponseChunk
    from hola_ros.interfaces import RESPONSE_QOS
    from hola_ros.srv import Ask

    chunks, sub = collect(graph, ResponseChunk, "/hola/response", RESPONSE_QOS)
    client = graph.node.create_client(Ask, "/hola/ask")
    assert client.wait_for_service(timeout_sec=30)
    time.sleep(1.5)  # let the new subscription match the verifier's publisher
    response = wait_future(client.call_async(Ask.Request(
        prompt="List two safety rules for working near the robot.", request_id="stream-check",
        max_new_tokens=40, retrieval_mode="off", decoding_mode="ar")), 300)
    deadline = time.monotonic() + 5
    while not any(c.done and c.request_id == "stream-check" for c in chunks) and time.monotonic() < deadline:
        time.sleep(0.05)
    mine = [c for c in chunks if c.request_id == "stream-check"]
    assert response.success and response.request_id == "stream-check"
    assert [c.sequence for c in mine] == list(range(len(mine))) and mine[-1].done and mine[-1].success
    assert sum(c.done for c in mine) == 1
    assert "".join(c.text_delta for c in mine) == response.text
    assert mine[-1].stats.new_tokens == response.stats.new_tokens and response.stats.decoding_mode == "ar"
    assert response.stats.retrieval_level == -1  # retrieval off: not attempted
    graph.node.destroy_subscription(sub)


def test_bad_requests_get_clear_errors_and_the_graph_keeps_serving(graph):
    from hola_ros.srv import Ask

    client = graph.node.create_client(Ask, "/hola/ask")
    assert client.wait_for_service(timeout_sec=30)
    cases = [(dict(prompt="   "), "prompt is empty"), (dict(prompt="hi", top_p=0.0), "top_p"),
             (dict(prompt="hi", retrieval_mode="maybe"), "unknown retrieval_mode"),
             (dict(prompt="hi", max_new_tokens=0), "max_new_tokens is 0")]
    for fields, words in cases:
        response = wait_future(client.call_async(Ask.Request(**fields)), 30)
        assert not response.success and words in response.error, (fields, response.error)
    ok = wait_future(client.call_async(Ask.Request(prompt="Say hello.", max_new_tokens=8, retrieval_mode="off")), 300)
    assert ok.success and ok.stats.new_tokens >= 1


def test_every_node_publishes_telemetry_and_diagnostics(graph):
    from diagnostic_msgs.msg import DiagnosticArray

    from hola_ros.interfaces import TELEMETRY_QOS
    from hola_ros.msg import Telemetry

    telemetry, sub1 = collect(graph, Telemetry, "/hola/telemetry", TELEMETRY_QOS)
    diagnostics, sub2 = collect(graph, DiagnosticArray, "/diagnostics")
    time.sleep(3.0)
    by_node = {m.node: m for m in telemetry}
    assert set(by_node) >= {"hola_retriever", "hola_drafter", "hola_verifier"}, set(by_node)
    for m in by_node.values():
        assert m.state == "active" and m.rss_bytes > 50 * 2**20 and m.gpu_source in ("none", "nvml", "jtop")
    assert by_node["hola_verifier"].requests_served >= 1  # earlier tests in this module asked
    names = {s.name for d in diagnostics for s in d.status}
    assert {"hola_ros: hola_verifier", "hola_ros: hola_drafter", "hola_ros: hola_retriever"} <= names
    graph.node.destroy_subscription(sub1)
    graph.node.destroy_subscription(sub2)


def test_action_streams_feedback_and_can_be_cancelled(graph):
    from action_msgs.msg import GoalStatus
    from rclpy.action import ActionClient

    from hola_ros.action import Generate

    client = ActionClient(graph.node, Generate, "/hola/generate")
    assert client.wait_for_server(timeout_sec=30)

    feedback = []
    goal = Generate.Goal(prompt="Describe the robot's daily maintenance routine.", max_new_tokens=24,
                         retrieval_mode="off")
    handle = wait_future(client.send_goal_async(goal, feedback_callback=lambda f: feedback.append(f.feedback)), 30)
    assert handle.accepted
    result = wait_future(handle.get_result_async(), 300)
    assert result.status == GoalStatus.STATUS_SUCCEEDED and result.result.success
    assert feedback and "".join(f.text_delta for f in feedback) == result.result.text
    assert feedback[-1].new_tokens == result.result.stats.new_tokens

    first_block = threading.Event()
    long_goal = Generate.Goal(prompt="Write a very long story about a warehouse robot.", max_new_tokens=600,
                              retrieval_mode="off", decoding_mode="ar")
    handle = wait_future(client.send_goal_async(long_goal, feedback_callback=lambda f: first_block.set()), 30)
    assert first_block.wait(120), "no feedback before cancel"
    wait_future(handle.cancel_goal_async(), 30)
    result = wait_future(handle.get_result_async(), 120)
    assert result.status == GoalStatus.STATUS_CANCELED
    assert result.result.stats.stop_reason == "cancelled" and 0 < result.result.stats.new_tokens < 600


def change_state(graph, node_name: str, transition_id: int) -> bool:
    from lifecycle_msgs.srv import ChangeState

    client = graph.node.create_client(ChangeState, f"/{node_name}/change_state")
    assert client.wait_for_service(timeout_sec=30)
    request = ChangeState.Request()
    request.transition.id = transition_id
    return wait_future(client.call_async(request), 120).success


def ask(graph, **fields):
    from hola_ros.srv import Ask

    client = graph.node.create_client(Ask, "/hola/ask")
    assert client.wait_for_service(timeout_sec=60)
    return wait_future(client.call_async(Ask.Request(**fields)), 300)


def wait_for_service(graph, srv_type, name, timeout=120):
    client = graph.node.create_client(srv_type, name)
    assert client.wait_for_service(timeout_sec=timeout), f"{name} did not come back"


def test_lifecycle_deactivate_frees_and_degrades_then_activate_restores(graph):
    from lifecycle_msgs.msg import Transition

    from hola_ros.srv import Draft

    prompt = dict(prompt="Repeat exactly: the dock is in zone B, the dock is in zone B.", max_new_tokens=24,
                  retrieval_mode="off")
    assert change_state(graph, "hola_drafter", Transition.TRANSITION_DEACTIVATE)
    without = ask(graph, **prompt)
    assert without.success and without.stats.degraded and "drafter_unavailable" in without.stats.flags

    assert change_state(graph, "hola_drafter", Transition.TRANSITION_ACTIVATE)
    wait_for_service(graph, Draft, "/hola/draft")
    time.sleep(2.0)  # the verifier's own client discovers the service independently of ours
    back = ask(graph, **prompt)
    assert back.success and not back.stats.degraded and back.stats.decoding_mode == "hsd"
    assert back.text == without.text  # lossless: the same greedy answer with or without drafts

    assert change_state(graph, "hola_retriever", Transition.TRANSITION_DEACTIVATE)
    no_rag = ask(graph, prompt="What does error E-305 mean?", max_new_tokens=8, retrieval_mode="single")
    assert no_rag.success and no_rag.stats.degraded and "retriever_unavailable" in no_rag.stats.flags
    assert change_state(graph, "hola_retriever", Transition.TRANSITION_ACTIVATE)


def test_drafter_killed_mid_generation_answer_still_arrives_and_hsd_resumes_after_respawn(graph):
    import os
    import signal

    from rclpy.action import ActionClient

    from hola_ros.action import Generate
    from hola_ros.srv import Draft

    drafter_pid = graph.node_pids()["hola_drafter"]
    client = ActionClient(graph.node, Generate, "/hola/generate")
    assert client.wait_for_server(timeout_sec=30)
    blocks = threading.Event()
    goal = Generate.Goal(prompt="Write a long list of numbered safety rules for a warehouse robot.",
                         max_new_tokens=160, retrieval_mode="off")
    handle = wait_future(client.send_goal_async(goal, feedback_callback=lambda f: blocks.set()), 30)
    assert blocks.wait(120)
    os.kill(drafter_pid, signal.SIGKILL)
    result = wait_future(handle.get_result_async(), 300).result
    assert result.success and result.stats.new_tokens > 0
    assert result.stats.degraded and "drafter_unavailable" in result.stats.flags

    deadline = time.monotonic() + 120
    while graph.node_pids().get("hola_drafter") in (None, drafter_pid):
        assert time.monotonic() < deadline, "drafter was not respawned"
        time.sleep(0.5)
    wait_for_service(graph, Draft, "/hola/draft")
    time.sleep(2.0)  # the verifier's own client discovers the service independently of ours
    again = ask(graph, prompt="Say hello to the operator.", max_new_tokens=12, retrieval_mode="off")
    assert again.success and not again.stats.degraded and again.stats.decoding_mode == "hsd"


# ---- conversations, tool calls and the skill bridge (issue 23) ------------------------------------
def test_a_three_turn_conversation_over_the_service_prefills_only_each_new_turn(graph):
    turns = ["My robot is called Tern-7. Say OK.", "Where do robots charge?", "What is my robot called?"]
    stats = []
    for text in turns:
        response = ask(graph, prompt=text, session_id="conv-1", max_new_tokens=16, retrieval_mode="off")
        assert response.success, response.error
        stats.append({"prompt": response.stats.prompt_tokens, **json.loads(response.stats.detail_json)})
    assert [s["session"]["turns"] for s in stats] == [1, 2, 3]
    assert stats[0]["prompt"] < stats[1]["prompt"] < stats[2]["prompt"]  # each turn carries the earlier ones
    for before, now in zip(stats, stats[1:]):  # the earlier turns' KV state is reused: only the new turn is prefilled
        assert now["reused_prompt_tokens"] >= before["prompt"]
    other = ask(graph, prompt="What is my robot called?", session_id="conv-2", max_new_tokens=8, retrieval_mode="off")
    assert other.success and json.loads(other.stats.detail_json)["session"]["turns"] == 1  # sessions are apart


def _robot_tools():
    from hola_ros.package_data import require_package_file

    return require_package_file("data/kb_eval/robot_tools.json").read_text()


def test_a_tool_request_returns_a_validated_call_in_its_own_field(graph):
    from jsonschema import validate

    tools = {t["name"]: t for t in json.loads(_robot_tools())}
    response = ask(graph, prompt="Go charge at the dock used for battery conditioning.", tools=_robot_tools(),
                   tool_choice="required", max_new_tokens=64)
    assert response.success, response.error
    assert len(response.tool_calls) == 1 and response.tool_calls[0].name in tools
    validate(json.loads(response.tool_calls[0].arguments_json), tools[response.tool_calls[0].name]["parameters"])
    detail = json.loads(response.stats.detail_json)
    assert detail["structured"] == "tools" and detail["constraint"]["complete"] and detail["tool_calls"] == 1
    bad = ask(graph, prompt="Go.", tools="[{\"name\": \"go to\"}]")
    assert not bad.success and "identifier" in bad.error


def test_the_skill_bridge_sends_the_validated_call_as_an_action_goal(graph):
    from rclpy.action import ActionServer
    from rclpy.parameter import Parameter

    from hola_ros.action import Skill
    from hola_ros.examples.skill_bridge import SkillBridge

    goals = []

    def run_skill(handle):  # the stand-in skill server: accepts every call and says what it got
        goals.append((handle.request.name, json.loads(handle.request.arguments_json)))
        handle.succeed()
        return Skill.Result(success=True, message=f"ran {handle.request.name}")

    servers = [ActionServer(graph.node, Skill, f"skills/{t['name']}", run_skill) for t in json.loads(_robot_tools())]
    bridge = SkillBridge(context=graph.context, parameter_overrides=[
        Parameter("request", value="Raise the lift to 40 mm."), Parameter("timeout_s", value=240.0)])
    graph.executor.add_node(bridge)
    try:
        success, message, call = wait_future(bridge.done, 300)
        assert success, message
        assert goals == [(call["name"], call["arguments"])] and message == f"ran {call['name']}"
    finally:
        graph.executor.remove_node(bridge)
        bridge.destroy_node()
        for server in servers:
            server.destroy()
