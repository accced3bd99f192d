import time

import psutil

from hola_ros.local_graph import LocalGraph


def run_graph_for_module(tmp_path_factory, name: str, params: str):
    """Generator body of a module-scoped fixture: the real graph, active, then a clean shutdown
    (runner exits 0 and no node process is left)."""
    graph = LocalGraph(tmp_path_factory.mktemp(name), params)
    try:
        graph.wait_active()
        yield graph
    finally:
        pids = list(graph.node_pids().values())
        code = graph.stop()
        time.sleep(0.5)
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert code == 0 and not alive, f"unclean shutdown: code {code}, alive {alive}\n{graph.log_text()[-3000:]}"
