"""launch/edge.launch.py with stand-ins for `launch` / `launch_ros` (not installable here):
the nodes it would start are exactly those of config/graph.yaml."""
import importlib.util
import sys
import types
from pathlib import Path

import pytest

from hola_ros.graph import load_graph

ROOT = Path(__file__).resolve().parent.parent


class Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def stand_ins(monkeypatch, arguments: dict):
    launch = types.ModuleType("launch")
    launch.LaunchDescription = lambda entities: list(entities)
    actions = types.ModuleType("launch.actions")
    actions.OpaqueFunction = Recorded
    actions.ExecuteProcess = Recorded
    substitutions = types.ModuleType("launch.substitutions")
    # a launch argument not given on the command line has its declared default
    declared = {}
    actions.DeclareLaunchArgument = lambda name, default_value, description: declared.setdefault(name, default_value)
    substitutions.LaunchConfiguration = lambda name: types.SimpleNamespace(
        perform=lambda context: arguments.get(name, declared[name]))
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")
    ros_actions.LifecycleNode = Recorded
    for name, module in {"launch": launch, "launch.actions": actions, "launch.substitutions": substitutions,
                         "launch_ros": launch_ros, "launch_ros.actions": ros_actions}.items():
        monkeypatch.setitem(sys.modules, name, module)


def load_launch_file():
    spec = importlib.util.spec_from_file_location("edge_launch", ROOT / "launch" / "edge.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launched_nodes(monkeypatch, **arguments):
    stand_ins(monkeypatch, arguments)
    description = load_launch_file().generate_launch_description()
    opaque = [e for e in description if isinstance(e, Recorded) and "function" in e.kwargs][0]
    return [n.kwargs for n in opaque.kwargs["function"](context=None) if "executable" in n.kwargs]


def launched_watchers(monkeypatch, **arguments):
    stand_ins(monkeypatch, arguments)
    description = load_launch_file().generate_launch_description()
    opaque = [e for e in description if isinstance(e, Recorded) and "function" in e.kwargs][0]
    return [n.kwargs for n in opaque.kwargs["function"](context=None) if "cmd" in n.kwargs]


def test_launch_starts_the_graph_config_nodes_as_lifecycle_nodes(monkeypatch):
    graph = load_graph()
    nodes = launched_nodes(monkeypatch)
    assert [(n["name"], n["executable"], n["respawn"], n["respawn_delay"]) for n in nodes] == \
        [(s.name, s.executable, s.respawn, s.respawn_delay) for s in graph.nodes]
    assert all(n["package"] == "hola_ros" and n["parameters"] == [str(graph.parameters)] for n in nodes)
    assert all(n["namespace"] == "/" and n["ros_arguments"] == ["--log-level", "info"] for n in nodes)


def test_launch_argument_selects_another_graph(monkeypatch, tmp_path):
    (tmp_path / "p.yaml").write_text("{}\n")
    (tmp_path / "g.yaml").write_text("parameters: p.yaml\nnodes:\n  - {name: solo, executable: verifier, respawn: false}\n")
    nodes = launched_nodes(monkeypatch, graph=str(tmp_path / "g.yaml"))
    assert [(n["name"], n["respawn"], n["parameters"]) for n in nodes] == [("solo", False, [str(tmp_path / "p.yaml")])]


def test_launch_arguments_namespace_params_file_log_level_and_nodes(monkeypatch, tmp_path):
    graph = load_graph()
    extra = tmp_path / "robot1.yaml"
    extra.write_text("{}\n")
    nodes = launched_nodes(monkeypatch, namespace="robot1", params_file=str(extra), log_level="debug",
                           nodes="hola_verifier")
    assert [n["name"] for n in nodes] == ["hola_verifier"]
    assert nodes[0]["namespace"] == "/robot1" and nodes[0]["ros_arguments"] == ["--log-level", "debug"]
    assert nodes[0]["parameters"] == [str(graph.parameters), str(extra)]  # the extra file wins


def test_launch_refuses_bad_arguments_with_the_reason(monkeypatch):
    with pytest.raises(ValueError, match="invalid namespace"):
        launched_nodes(monkeypatch, namespace="robot 1")
    with pytest.raises(ValueError, match="unknown log level"):
        launched_nodes(monkeypatch, log_level="loud")
    with pytest.raises(FileNotFoundError, match="parameters file not found"):
        launched_nodes(monkeypatch, params_file="/nonexistent/params.yaml")


def test_launch_watches_for_the_graph_to_report_ready(monkeypatch):
    graph = load_graph()
    [watcher] = launched_watchers(monkeypatch, namespace="robot1", nodes="hola_verifier,hola_retriever")
    cmd = watcher["cmd"]
    assert cmd[1:6] == ["-m", "hola_ros.cli", "status", "--wait", "--timeout"] and cmd[6] == "600"
    assert cmd[cmd.index("--config") + 1] == str(graph.path) and cmd[cmd.index("--namespace") + 1] == "/robot1"
    assert cmd[cmd.index("--only") + 1] == "hola_retriever,hola_verifier"  # in the graph's order
    assert launched_watchers(monkeypatch, ready_timeout="0") == []
