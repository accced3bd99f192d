"""hola-ros up: run the node graph in the foreground (the same options as launch/edge.launch.py)."""
from hola_ros.graph import LOG_LEVELS


def register(sub) -> None:
    parser = sub.add_parser("up", help="run the node graph (retriever, drafter, verifier) until SIGINT/SIGTERM")
    parser.add_argument("--config", "--graph", dest="config", metavar="GRAPH",
                        help="graph YAML (default: config/graph.yaml of the package)")
    parser.add_argument("--params", "--params-file", dest="params", action="append", default=[], metavar="FILE",
                        help="extra ROS 2 parameters file given to every node (later files win); repeatable")
    parser.add_argument("--namespace", default="",
                        help="ROS namespace of the whole graph: robot1 serves /robot1/hola/ask (default: none, /hola/ask)")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    parser.add_argument("--only", default="", metavar="NODE[,NODE]",
                        help="start only these nodes of the graph (split deployment: drafter and retriever on the "
                             "robot, verifier on an edge server)")
    parser.add_argument("--ready-timeout", type=float, default=600.0, metavar="S",
                        help="log when every node reports ready (index loaded, the verifier's retriever answering), "
                             "or that it was not within S seconds (default 600; 0: do not watch)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from hola_ros.graph import launch_options, load_graph
    from hola_ros.runner import run_graph

    try:
        graph = load_graph(args.config)
        options = launch_options(graph, args.namespace, args.params, args.log_level, args.only)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"hola-ros up: {exc}")
    return run_graph(graph, options, ready_timeout_s=args.ready_timeout)
