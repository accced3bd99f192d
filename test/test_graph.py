import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hola_ros import runner
from hola_ros.graph import EXECUTABLES, NodeSpec, config_dir, load_graph

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
    assert "load_graph(" in launch and "graph.nodes" in launch and "respawn=node.respawn" in launch


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


def test_node_command_runs_the_module_with_name_and_parameter_files(tmp_path):
    graph = load_graph()
    extra = tmp_path / "extra.yaml"
    command = runner.node_command(graph.nodes[0], graph, [extra])
    assert command[:3] == [sys.executable, "-m", f"hola_ros.nodes.{graph.nodes[0].executable}"]
    assert f"__node:={graph.nodes[0].name}" in command
    assert command.index(str(graph.parameters)) < command.index(str(extra))  # later files win


def test_runner_respawns_a_dead_node_and_stops_everything_on_sigint(tmp_path, monkeypatch):
    """The supervisor with stand-in node processes: kill one, it comes back; SIGINT ends all."""
    pids = tmp_path / "pids"
    script = f"import os,time; open({str(pids)!r},'a').write(f'{{os.getpid()}}\\n'); time.sleep(600)"
    monkeypatch.setattr(runner, "node_command", lambda spec, graph, extra: [sys.executable, "-c", script])
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
