"""hola-ros ask: ask the running graph through hola_ros.client and stream the answer."""
import sys

from hola_ros.core.requests import DECODING_MODES, RETRIEVAL_MODES

EXIT_FAILED, EXIT_TIMEOUT = 1, 124


def register(sub) -> None:
    parser = sub.add_parser("ask", help="ask the running graph (hola/ask); the answer streams from hola/response")
    parser.add_argument("text", help="the question")
    parser.add_argument("--namespace", default="", help="namespace of the graph (as given to `hola-ros up`)")
    parser.add_argument("--retrieval", default="auto", choices=RETRIEVAL_MODES, help="retrieval mode (default auto)")
    parser.add_argument("--mode", default="hsd", choices=DECODING_MODES, help="decoding mode (default hsd)")
    parser.add_argument("--max-new-tokens", type=int, default=-1, help="default: the verifier's")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=-1, help="-1 = unseeded")
    parser.add_argument("--request-id", default="", help="default: a new unique id")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds for the whole call, waiting for the service included (default 300)")
    parser.add_argument("--liveness", type=float, default=10.0, metavar="S",
                        help="fail when the verifier's telemetry stops for S seconds mid-request "
                             "(default 10; keep it above the telemetry period)")
    parser.add_argument("--json", action="store_true", help="print the final response as one JSON object")
    parser.set_defaults(run=run)


def run(args) -> int:
    import dataclasses
    import json
    import os

    import rclpy

    from hola_ros.client import HolaClient

    if not args.timeout > 0 or not args.liveness > 0:
        raise SystemExit("hola-ros ask: --timeout and --liveness must be > 0")
    rclpy.init()
    node = rclpy.create_node(f"hola_ask_{os.getpid()}")
    try:
        client = HolaClient(node, namespace=args.namespace, liveness_s=args.liveness)
        stream = None if args.json else (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
        future = client.ask(args.text, timeout_s=args.timeout, on_delta=stream, request_id=args.request_id,
                            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed, retrieval_mode=args.retrieval, decoding_mode=args.mode)
        rclpy.spin_until_future_complete(node, future)  # the client bounds the wait itself
        answer = future.result()
        if stream is not None and answer.text.startswith(streamed := "".join(future.deltas())):
            sys.stdout.write(answer.text[len(streamed):])  # whatever the stream missed
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    if args.json:
        result = dataclasses.asdict(answer)
        result.pop("timed_out")
        print(json.dumps(result, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        if not answer.success:
            print(f"hola-ros ask: {answer.error}", file=sys.stderr)
    return 0 if answer.success else EXIT_TIMEOUT if answer.timed_out else EXIT_FAILED
