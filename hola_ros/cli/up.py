"""hola-ros up: run the node graph in the foreground."""
from pathlib import Path


def register(sub) -> None:
    parser = sub.add_parser("up", help="run the node graph (retriever, drafter, verifier) until SIGINT/SIGTERM")
    parser.add_argument("--config", help="graph YAML (default: config/graph.yaml of the package)")
    parser.add_argument("--params", action="append", default=[], metavar="FILE",
                        help="extra ROS 2 parameters file given to every node (later files win); repeatable")
    parser.set_defaults(run=run)


def run(args) -> int:
    from hola_ros.graph import load_graph
    from hola_ros.runner import run_graph

    extra = [Path(p).resolve() for p in args.params]
    missing = [str(p) for p in extra if not p.is_file()]
    if missing:
        raise SystemExit(f"hola-ros up: parameters file not found: {', '.join(missing)}")
    try:
        graph = load_graph(args.config)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"hola-ros up: {exc}")
    return run_graph(graph, extra)
