"""hola-ros status: the graph's nodes as their telemetry (hola/telemetry) reports them."""


def register(sub) -> None:
    parser = sub.add_parser("status", help="show each node's state and resources from hola/telemetry")
    parser.add_argument("--config", help="graph YAML whose nodes to expect (default: the package's)")
    parser.add_argument("--namespace", default="", help="namespace of the graph (as given to `hola-ros up`)")
    parser.add_argument("--only", default="", metavar="NODE[,NODE]", help="expect only these nodes of the graph")
    parser.add_argument("--wait", action="store_true",
                        help="wait until every node of the graph reports ready (active, index loaded, the verifier's "
                             "retriever answering)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to listen / wait (default 10)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(run=run)


def run(args) -> int:
    import json
    import os
    import time

    import rclpy

    from hola_ros.graph import launch_options, load_graph
    from hola_ros.interfaces import TELEMETRY, TELEMETRY_QOS, resolve
    from hola_ros.msg import Telemetry
    from hola_ros.nodes.convert import msg_to_dict

    try:
        options = launch_options(load_graph(args.config), args.namespace, only=args.only)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"hola-ros status: {exc}")
    expected = {n.name for n in options.nodes}
    rclpy.init()
    node = rclpy.create_node(f"hola_status_{os.getpid()}")
    latest: dict[str, Telemetry] = {}
    node.create_subscription(Telemetry, resolve(TELEMETRY, options.namespace),
                             lambda m: latest.__setitem__(m.node, m), TELEMETRY_QOS)

    def ready() -> bool:
        return all(name in latest and latest[name].ready for name in expected)

    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline and not (args.wait and ready()):
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    if args.json:
        print(json.dumps({name: msg_to_dict(m) for name, m in sorted(latest.items())}))
    else:
        print(f"{'node':<18}{'state':<12}{'ready':<7}{'cpu %':>7}{'rss MB':>9}{'tok/s':>8}{'queue':>7}{'served':>8}")
        for name in sorted(expected | set(latest)):
            m = latest.get(name)
            if m is None:
                print(f"{name:<18}{'(silent)':<12}{'no':<7}")
            else:
                print(f"{name:<18}{m.state:<12}{'yes' if m.ready else 'no':<7}{m.cpu_percent:>7.0f}"
                      f"{m.rss_bytes / 2**20:>9.0f}{m.tokens_per_s:>8.1f}{m.queue_depth:>7}{m.requests_served:>8}"
                      + ("" if m.ready else f"  ({m.not_ready_reason})"))
        print("graph ready" if ready() else "graph NOT ready")
    return 0 if ready() or not args.wait else 1
