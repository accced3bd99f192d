"""hola-ros documents: add, remove or list the documents of the running graph's retriever (hola/documents)."""


def register(sub) -> None:
    parser = sub.add_parser("documents", help="add, remove or list the running retriever's documents (no restart)")
    parser.add_argument("op", choices=("add", "remove", "list"))
    parser.add_argument("paths", nargs="*", help="files or folders on the retriever's machine (add, remove)")
    parser.add_argument("--namespace", default="", help="namespace of the graph (as given to `hola-ros up`)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for the service and the ingest (default 600)")
    parser.add_argument("--json", action="store_true", help="print the response as one JSON object")
    parser.set_defaults(run=run)


def run(args) -> int:
    import json
    import os
    from pathlib import Path

    import rclpy

    from hola_ros.interfaces import DOCUMENTS, resolve
    from hola_ros.nodes.convert import msg_to_dict
    from hola_ros.srv import Documents

    if args.op != "list" and not args.paths:
        raise SystemExit(f"hola-ros documents {args.op}: give at least one path")
    paths = [Path(p).resolve() for p in args.paths]  # the retriever resolves paths in its own directory
    rclpy.init()
    node = rclpy.create_node(f"hola_documents_{os.getpid()}")
    try:
        client = node.create_client(Documents, resolve(DOCUMENTS, args.namespace))
        response = None
        if client.wait_for_service(timeout_sec=min(args.timeout, 30.0)):
            future = client.call_async(Documents.Request(op=args.op, paths=[str(p) for p in paths]))
            rclpy.spin_until_future_complete(node, future, timeout_sec=args.timeout)
            response = future.result() if future.done() else None
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    if response is None:
        print(f"hola-ros documents: no answer from the retriever within {args.timeout:g} s (is the graph running?)")
        return 124
    if args.json:
        print(json.dumps(msg_to_dict(response), ensure_ascii=False))
    elif not response.success:
        print(f"hola-ros documents {args.op}: {response.error}")
    elif args.op == "list":
        print("\n".join(response.sources))
        print(f"{len(response.sources)} files, {response.total_passages} passages in {response.index_dir}")
    else:
        print(f"{response.index_dir}: added {len(response.added)}, replaced {len(response.replaced)}, unchanged "
              f"{len(response.unchanged)}, removed {len(response.removed)}, empty {len(response.skipped_empty)}; "
              f"{response.total_passages} passages ({response.seconds:.1f} s)")
    return 0 if response.success else 1
