import time

import psutil
import yaml

from hola_ros.core.model_store import TEST_MODEL
from hola_ros.local_graph import LocalGraph


def with_test_model(params: str) -> str:
    """The graph's parameters with the tiny test model served, unless they name a model."""
    tree = yaml.safe_load(params) or {}
    verifier = tree.setdefault("hola_verifier", {}).setdefault("ros__parameters", {})
    verifier.setdefault("model", TEST_MODEL)
    return yaml.safe_dump(tree)


def run_graph_for_module(tmp_path_factory, name: str, params: str):
    """Generator body of a module-scoped fixture: the real graph on the test model, active, then
    a clean shutdown (runner exits 0 and no node process is left)."""
    graph = LocalGraph(tmp_path_factory.mktemp(name), with_test_model(params))
    try:
        graph.wait_active()
        yield graph
    finally:
        pids = list(graph.node_pids().values())
        code = graph.stop()
        time.sleep(0.5)
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert code == 0 and not alive, f"unclean shutdown: code {code}, alive {alive}\n{graph.log_text()[-3000:]}"
