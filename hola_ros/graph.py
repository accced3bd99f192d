"""The node graph description (config/graph.yaml), shared by the launch file and `hola-ros up`."""
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from hola_ros.package_data import require_package_file

EXECUTABLES = ("retriever", "drafter", "verifier")


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
