"""The node graph description (config/graph.yaml) and the launch options, shared by the launch
file and `hola-ros up`."""
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from hola_ros.package_data import require_package_file

EXECUTABLES = ("retriever", "drafter", "verifier")
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    executable: str
    respawn: bool = True
    respawn_delay: float = 2.0


@dataclass(frozen=True)
class Graph:
    path: Path
    parameters: Path
    nodes: tuple[NodeSpec, ...]


def config_dir() -> Path:
    return require_package_file("config/graph.yaml").parent


def load_graph(path: str | os.PathLike | None = None) -> Graph:
    path = Path(path) if path else config_dir() / "graph.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"graph config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or not data["nodes"]:
        raise ValueError(f"{path}: needs a non-empty 'nodes' list")
    nodes, names = [], set()
    for i, entry in enumerate(data["nodes"]):
        if not isinstance(entry, dict) or "name" not in entry or "executable" not in entry:
            raise ValueError(f"{path}: nodes[{i}] needs 'name' and 'executable'")
        if entry["executable"] not in EXECUTABLES:
            raise ValueError(f"{path}: nodes[{i}]: unknown executable {entry['executable']!r} "
                             f"(one of {', '.join(EXECUTABLES)})")
        if entry["name"] in names:
            raise ValueError(f"{path}: node name {entry['name']!r} appears twice")
        names.add(entry["name"])
        nodes.append(NodeSpec(name=str(entry["name"]), executable=entry["executable"],
                              respawn=bool(entry.get("respawn", True)),
                              respawn_delay=float(entry.get("respawn_delay", 2.0))))
    parameters = (path.parent / data.get("parameters", "hola.yaml")).resolve()
    if not parameters.is_file():
        raise FileNotFoundError(f"{path}: parameters file not found: {parameters}")
    return Graph(path=path.resolve(), parameters=parameters, nodes=tuple(nodes))


@dataclass(frozen=True)
class LaunchOptions:
    """What `ros2 launch hola_ros edge.launch.py` and `hola-ros up` take besides the graph."""
    namespace: str = "/"
    params_files: tuple[Path, ...] = ()   # after the graph's own parameters file: later files win
    log_level: str = "info"
    nodes: tuple[NodeSpec, ...] = ()      # the graph's nodes to start (a split deployment starts a subset)


def launch_options(graph: Graph, namespace: str | None = "", params_files=(), log_level: str = "info",
                   only: str | list[str] = "") -> LaunchOptions:
    """Checked options; ValueError / FileNotFoundError say what is wrong. `only`: node names
    (a list or a comma-separated string); empty: every node of the graph."""
    from hola_ros.interfaces import normalize_namespace  # rclpy: not for `hola-ros --help`

    files = tuple(Path(p).resolve() for p in params_files if str(p))
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"parameters file not found: {', '.join(missing)}")
    if log_level not in LOG_LEVELS:
        raise ValueError(f"unknown log level {log_level!r}: use one of {', '.join(LOG_LEVELS)}")
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
    known = {n.name: n for n in graph.nodes}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"no node {', '.join(map(repr, unknown))} in {graph.path} (nodes: {', '.join(known)})")
    nodes = tuple(n for n in graph.nodes if not names or n.name in names)
    return LaunchOptions(normalize_namespace(namespace), files, log_level, nodes)


def readiness_command(graph: Graph, options: LaunchOptions, timeout_s: float) -> list[str]:
    """`hola-ros status --wait` for the nodes `options` start: it prints their states and exits 0 once
    every one reports ready (index loaded, the verifier's retriever answering), 1 after `timeout_s`.
    `hola-ros up` and the launch file run it beside the nodes, so both say when the graph is ready."""
    import sys

    return [sys.executable, "-m", "hola_ros.cli", "status", "--wait", "--timeout", f"{timeout_s:g}",
            "--config", str(graph.path), "--namespace", options.namespace,
            "--only", ",".join(n.name for n in options.nodes)]
