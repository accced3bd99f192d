import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hola_ros import runner
from hola_ros.graph import EXECUTABLES, NodeSpec, config_dir, launch_options, load_graph

ROOT = Path(__file__).resolve().parent.parent


def test_packaged_graph_has_the_three_nodes_and_parameters():
    graph = load_graph()
    assert graph.path == (ROOT / "config" / "graph.yaml").resolve() and config_dir() == ROOT / "config"
    assert sorted(n.executable for n in graph.nodes) == sorted(EXECUTABLES)
    params = graph.parameters.read_text()
    for node in graph.nodes:
        assert f"{node.name}:" in params  # every node has its own parameter section


def test_launch_file_reads_the_same_graph_description():
    launch = (ROOT / "launch" / "edge.launch.py").read_text()
    assert "load_graph(" in launch and "launch_options(" in launch and "respawn=node.respawn" in launch


@pytest.mark.parametrize("text, words", [
    ("nodes: []", "non-empty 'nodes'"),
    ("nodes: [{name: a}]", "needs 'name' and 'executable'"),
    ("nodes: [{name: a, executable: planner}]", "unknown executable"),
    ("nodes: [{name: a, executable: drafter}, {name: a, executable: verifier}]", "appears twice"),
    ("nodes: [{name: a, executable: drafter}]\nparameters: missing.yaml", "parameters file not found"),
    ("nodes: [oops", "not valid YAML"),
])
def test_bad_graph_files_are_refused_clearly(tmp_path, text, words):
    path = tmp_path / "graph.yaml"
    path.write_text(text)
    (tmp_path / "hola.yaml").write_text("{}")
    with pytest.raises(ValueError, match=words) if "not found" not in words else pytest.raises(FileNotFoundError, match=words):
        load_graph(path)


def test_node_command_runs_the_module_with_name_namespace_parameter_files_and_log_level(tmp_path):
    graph = load_graph()
    extra = tmp_path / "extra.yaml"
    extra.write_text("{}\n")
    command = runner.node_command(graph.nodes[0], graph, launch_options(graph, "robot1", [extra], "debug"))
    assert command[:3] == [sys.executable, "-m", f"hola_ros.nodes.{graph.nodes[0].executable}"]
    assert f"__node:={graph.nodes[0].name}" in command and "__ns:=/robot1" in command
    assert command.index(str(graph.parameters)) < command.index(str(extra))  # later files win
    assert command[-2:] == ["--log-level", "debug"]
    assert "__ns:=/" in runner.node_command(graph.nodes[0], graph, launch_options(graph))


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(namespace="robot 1"), ValueError, "invalid namespace"),
    (dict(namespace="1robot"), ValueError, "invalid namespace"),
    (dict(log_level="verbose"), ValueError, "unknown log level"),
    (dict(only="hola_verifier,hola_planner"), ValueError, "no node 'hola_planner'"),
    (dict(params_files=["/nonexistent.yaml"]), FileNotFoundError, "parameters file not found"),
])
def test_launch_options_refuse_bad_values_with_the_reason(kwargs, error, words):
    with pytest.raises(error, match=words):
        launch_options(load_graph(), **kwargs)


def test_launch_options_select_nodes_in_graph_order():
    graph = load_graph()
    options = launch_options(graph, "/robot1/", only="hola_verifier, hola_drafter")
    assert options.namespace == "/robot1"
    assert [n.name for n in options.nodes] == [n.name for n in graph.nodes if n.name in ("hola_verifier", "hola_drafter")]
    assert launch_options(graph).nodes == graph.nodes


def test_up_refuses_a_bad_namespace_before_starting_anything():
    result = subprocess.run([sys.executable, "-m", "hola_ros.cli", "up", "--namespace", "robot-1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "invalid namespace 'robot-1'" in result.stderr


def test_runner_respawns_a_dead_node_and_stops_everything_on_sigint(tmp_path, monkeypatch):
    """The supervisor with stand-in node processes: kill one, it comes back; SIGINT ends all."""
    pids = tmp_path / "pids"
    script = f"import os,time; open({str(pids)!r},'a').write(f'{{os.getpid()}}\\n'); time.sleep(600)"
    monkeypatch.setattr(runner, "node_command", lambda spec, graph, options: [sys.executable, "-c", script])
    monkeypatch.setattr(runner, "STOP_GRACE_S", 5.0)
    graph = load_graph()
    graph = type(graph)(path=graph.path, parameters=graph.parameters,
                        nodes=(NodeSpec("a", "drafter", True, 0.2), NodeSpec("b", "retriever", False, 0.2)))
    result = {}
    # run_graph installs signal handlers, which only the main thread may do: run it there and
    # drive it from a helper thread.
    def drive():
        def started():
            return pids.read_text().split() if pids.exists() else []
        deadline = time.monotonic() + 20
        while len(started()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        first = [int(p) for p in started()]
        result["first"] = first
        import os
        os.kill(first[0], signal.SIGKILL)
        while len(started()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        result["all"] = [int(p) for p in started()]
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=drive, daemon=True).start()
    assert runner.run_graph(graph) == 0
    assert len(result["first"]) == 2 and len(result["all"]) == 3, result  # exactly one respawn
    for pid in result["all"]:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
