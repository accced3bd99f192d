"""hola-ros ask: ask the running graph through hola_ros.client and stream the answer."""
import sys

from hola_ros.core.requests import DECODING_MODES, GRAMMAR_SYNTAXES, RETRIEVAL_MODES
from hola_ros.core.tools import TOOL_CHOICES

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
    parser.add_argument("--session", default="", help="session id: a conversation whose earlier turns (and KV state) "
                                                      "the verifier keeps")
    parser.add_argument("--system", default="", help="system prompt of this request")
    parser.add_argument("--json-schema", default="", metavar="SCHEMA|@FILE",
                        help="the answer is JSON valid against this JSON Schema")
    parser.add_argument("--grammar", default="", metavar="GRAMMAR|@FILE", help="the answer follows this grammar")
    parser.add_argument("--grammar-syntax", default="lark", choices=GRAMMAR_SYNTAXES)
    parser.add_argument("--tools", default="", metavar="JSON|@FILE",
                        help="JSON list of tools {name, description, parameters}: the answer is text or a validated call")
    parser.add_argument("--tool-choice", default="auto", choices=TOOL_CHOICES)
    parser.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
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
                            seed=args.seed, retrieval_mode=args.retrieval, decoding_mode=args.mode, stop=args.stop,
                            session_id=args.session, system_prompt=args.system,
                            json_schema=_text_or_file(args.json_schema), grammar=_text_or_file(args.grammar),
                            grammar_syntax=args.grammar_syntax, tools=_text_or_file(args.tools),
                            tool_choice=args.tool_choice)
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
        for call in answer.tool_calls:
            print(f"tool call: {call['name']}({json.dumps(call['arguments'], ensure_ascii=False)})")
        if not answer.success:
            print(f"hola-ros ask: {answer.error}", file=sys.stderr)
    return 0 if answer.success else EXIT_TIMEOUT if answer.timed_out else EXIT_FAILED


def _text_or_file(value: str) -> str:
    """An option's text, or the content of the file it names with a leading @."""
    if value.startswith("@"):
        with open(value[1:], encoding="utf-8") as f:
            return f.read()
    return value
