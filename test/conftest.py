import time

import psutil
import yaml

from hola_ros.core.model_store import TEST_MODEL
from hola_ros.local_graph import LocalGraph


def graph_params(common=None, verifier=None, drafter=None, retriever=None) -> str:
    """A parameters file for a test graph, with the tiny SmolLM2 pinned (the package's default
    model may be a bigger one)."""
    sections = {"/**": common or {}, "/**/hola_verifier": {"model": TEST_MODEL, **(verifier or {})},
                "/**/hola_drafter": drafter or {},
                "/**/hola_retriever": {"gate_model": TEST_MODEL, **(retriever or {})}}
    return yaml.safe_dump({name: {"ros__parameters": values} for name, values in sections.items() if values})


def run_graph_for_module(tmp_path_factory, name: str, params: str, **graph_options):
    """Generator body of a module-scoped fixture: the real graph, active, then a clean shutdown
    (runner exits 0 and no node process is left)."""
    graph = LocalGraph(tmp_path_factory.mktemp(name), params, **graph_options)
    try:
        graph.wait_active()
        yield graph
    finally:
        pids = list(graph.node_pids().values())
        code = graph.stop()
        time.sleep(0.5)
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert code == 0 and not alive, f"unclean shutdown: code {code}, alive {alive}\n{graph.log_text()[-3000:]}"
