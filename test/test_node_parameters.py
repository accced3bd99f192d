"""Node parameters as ROS declares them: descriptors with ranges and descriptions, refusals that
say why, load-time parameters refused while the node is active, bad parameter files refused at
start with the reason."""
import subprocess
import sys
from pathlib import Path

import pytest
import rclpy
from rclpy.exceptions import InvalidParameterValueException
from rclpy.parameter import Parameter

from hola_ros.nodes.drafter import DrafterNode
from hola_ros.nodes.params import ACTIVATION, LIVE, START
from hola_ros.nodes.retriever import PARAMS as RETRIEVER_PARAMS
from hola_ros.nodes.verifier import PARAMS as VERIFIER_PARAMS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def context():
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=231)
    yield context
    rclpy.try_shutdown(context=context)


def set_one(node, name, value):
    return node.set_parameters([Parameter(name, value=value)])[0]


def test_every_parameter_has_a_description_and_numbers_have_ranges():
    for params in (VERIFIER_PARAMS, RETRIEVER_PARAMS):
        for name, spec in params.items():
            descriptor = spec.descriptor(name)
            assert descriptor.description, name
            if isinstance(spec.default, (int, float)) and not isinstance(spec.default, bool):
                assert descriptor.integer_range or descriptor.floating_point_range, name
    # what needs a reload says so, and is not live
    for name in ("model", "threads", "concurrency", "dtype"):
        assert VERIFIER_PARAMS[name].applies == ACTIVATION
        assert "applies at activation" in VERIFIER_PARAMS[name].descriptor(name).additional_constraints
    assert VERIFIER_PARAMS["queue_size"].applies == LIVE


def test_descriptors_are_served_and_ranges_enforced_by_rclpy(context):
    node = DrafterNode(context=context)
    try:
        descriptor = node.describe_parameter("max_open_requests")
        assert descriptor.integer_range[0].from_value == 1 and descriptor.description
        assert node.describe_parameter("autostart").read_only and node._params["autostart"].applies == START
        refused = set_one(node, "max_open_requests", 0)
        assert not refused.successful and "max_open_requests" in refused.reason and "range" in refused.reason
        assert not set_one(node, "dtype", "float8").successful
        assert "one of float32" in set_one(node, "dtype", "float8").reason
        assert not set_one(node, "autostart", False).successful  # read-only
        assert set_one(node, "max_open_requests", 5).successful and node.param("max_open_requests") == 5
    finally:
        node.destroy_node()


def test_load_time_parameters_are_refused_while_active_and_accepted_inactive(context):
    node = DrafterNode(context=context)
    try:
        assert node.trigger_configure() and node.trigger_activate()
        assert node.state_label == "active"
        refused = set_one(node, "threads", 1)
        assert not refused.successful and "threads applies when the node activates" in refused.reason
        assert set_one(node, "threads", node.param("threads")).successful  # the value it has: nothing to reload
        assert set_one(node, "max_open_requests", 7).successful  # live
        node.trigger_deactivate()
        assert set_one(node, "threads", 1).successful
        node.trigger_activate()
        assert node.state_label == "active" and node.param("threads") == 1
    finally:
        node.deactivate_resources()
        node.destroy_node()


def test_an_out_of_range_value_in_the_parameters_file_is_refused_at_start(context):
    with pytest.raises(InvalidParameterValueException, match="max_open_requests"):
        DrafterNode(context=context, parameter_overrides=[Parameter("max_open_requests", value=0)])


def test_the_node_process_exits_with_the_reason_on_a_bad_parameters_file(tmp_path):
    params = tmp_path / "bad.yaml"
    params.write_text("/**/hola_drafter:\n  ros__parameters:\n    threads: 0\n")
    run = subprocess.run([sys.executable, "-m", "hola_ros.nodes.drafter", "--ros-args", "-r", "__node:=hola_drafter",
                          "--params-file", str(params)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "ROS_DOMAIN_ID": "232"})
    assert run.returncode == 1, run.stdout + run.stderr
    assert "invalid parameter" in run.stderr and "threads" in run.stderr, run.stderr
