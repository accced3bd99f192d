"""hola-ros ask: call /hola/ask on the running graph and stream the answer from /hola/response."""
import sys

from hola_ros.core.requests import DECODING_MODES, RETRIEVAL_MODES

EXIT_FAILED, EXIT_TIMEOUT = 1, 124


def register(sub) -> None:
    parser = sub.add_parser("ask", help="ask the running graph (/hola/ask); the answer streams from /hola/response")
    parser.add_argument("text", help="the question")
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


class VerifierLiveness:
    """Which verifier processes are alive, from their /hola/telemetry. A request's verifier that
    falls silent (killed, restarted: DDS may keep a dead server "ready" for many seconds, and a
    respawned one answers only new requests) means the request died with it."""

    def __init__(self, silence_s: float):
        import time

        self._clock, self.silence_s = time.monotonic, silence_s
        self.last_seen: dict[str, float] = {}
        self.watched: set[str] = set()

    def on_telemetry(self, msg) -> None:
        if msg.role == "verifier":
            self.last_seen[msg.instance_id] = self._clock()

    def watch_live(self) -> None:
        now = self._clock()
        self.watched = {i for i, seen in self.last_seen.items() if now - seen < self.silence_s}

    def gone(self) -> bool:
        now = self._clock()
        return bool(self.watched) and all(now - self.last_seen[i] > self.silence_s for i in self.watched)


def run(args) -> int:
    import json
    import os
    import threading
    import time
    import uuid

    import rclpy
    from rclpy.event_handler import SubscriptionEventCallbacks

    from hola_ros.msg import ResponseChunk, Telemetry
    from hola_ros.nodes.convert import msg_to_dict
    from hola_ros.nodes.verifier import RESPONSE_QOS
    from hola_ros.srv import Ask

    deadline = time.monotonic() + args.timeout
    request_id = args.request_id or uuid.uuid4().hex
    rclpy.init()
    node = rclpy.create_node(f"hola_ask_{os.getpid()}")
    deltas, final = [], threading.Event()
    matched = threading.Event()

    def on_chunk(msg):
        if msg.request_id != request_id:
            return
        if msg.done:
            final.set()
        elif msg.text_delta:
            deltas.append(msg.text_delta)
            if not args.json:
                sys.stdout.write(msg.text_delta)
                sys.stdout.flush()

    node.create_subscription(ResponseChunk, "/hola/response", on_chunk, RESPONSE_QOS,
                             event_callbacks=SubscriptionEventCallbacks(
                                 matched=lambda info: matched.set() if info.current_count > 0 else None))
    liveness = VerifierLiveness(args.liveness)
    node.create_subscription(Telemetry, "/hola/telemetry", liveness.on_telemetry, 50)
    client = node.create_client(Ask, "/hola/ask")

    def spin_until(condition, until) -> bool:
        while not condition():
            if time.monotonic() >= until:
                return False
            rclpy.spin_once(node, timeout_sec=0.05)
        return True

    result = {"success": False, "error": "", "request_id": request_id, "text": "", "stats": {}, "chunks": 0}
    code = EXIT_FAILED
    try:
        if not spin_until(client.service_is_ready, deadline):
            result["error"] = (f"service /hola/ask not available within {args.timeout:.0f} s "
                               "(is the graph running? start it with `hola-ros up`)")
            code = EXIT_TIMEOUT
        else:
            # the stream is only complete if our subscription matched the verifier's publisher first
            spin_until(lambda: matched.is_set() and liveness.last_seen, min(deadline, time.monotonic() + 5.0))
            liveness.watch_live()
            future = client.call_async(Ask.Request(
                prompt=args.text, request_id=request_id, max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                retrieval_mode=args.retrieval, decoding_mode=args.mode))
            if not spin_until(lambda: future.done() or liveness.gone(), deadline):
                result["error"] = f"no answer within {args.timeout:.0f} s"
                code = EXIT_TIMEOUT
            elif not future.done():
                result["error"] = (f"the verifier went away before answering (no telemetry for {args.liveness:.0f} s: "
                                   "node stopped or restarted)")
            else:
                response = future.result()
                if response.success or deltas:  # accepted requests end with a final chunk
                    spin_until(final.is_set, min(deadline, time.monotonic() + 5.0))
                streamed = "".join(deltas)
                if not args.json and response.text.startswith(streamed):
                    sys.stdout.write(response.text[len(streamed):])  # whatever the stream missed
                result.update(success=response.success, error=response.error, request_id=response.request_id,
                              text=response.text, stats=msg_to_dict(response.stats))
                code = 0 if response.success else EXIT_FAILED
    finally:
        result["chunks"] = len(deltas) + (1 if final.is_set() else 0)
        node.destroy_node()
        rclpy.try_shutdown()
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        sys.stdout.write("\n")
        if not result["success"]:
            print(f"hola-ros ask: {result['error']}", file=sys.stderr)
    return code
