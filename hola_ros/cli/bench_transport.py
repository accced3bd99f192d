"""hola-ros bench-transport: what running HOLA as three ROS 2 processes costs, measured side by
side in one run: the draft protocol's round trip (in-process call vs hola/draft) and the same
requests answered in-process vs through the node graph (hola/ask)."""

PROMPTS = [
    ("The robot shows error E-214. What should I do?", "auto"),
    ("Where is charging dock CD-5 and when should a robot use it?", "auto"),
    ("Summarise the daily maintenance checklist in three bullet points.", "single"),
    ("Say hello to the new operator in one sentence.", "off"),
]


def register(sub) -> None:
    parser = sub.add_parser("bench-transport", help="measure in-process vs 3-process (ROS) cost of the same work")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--proposals", type=int, default=300, help="draft round trips to time (default 300)")
    parser.add_argument("--out", default="results/transport", help="directory for transport.md / .json")
    parser.set_defaults(run=run)


def _percentiles(values: list[float]) -> dict:
    import numpy as np

    a = np.asarray(values) * 1000.0
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "n": len(values)}


def _draft_round_trips(propose, prompt_ids: list[int], continuation: list[int], count: int) -> list[float]:
    """Time `count` proposals over a realistic stream: each step commits 1-3 tokens of the
    continuation (what the verifier would send back after a partial acceptance)."""
    import time

    times, position = [], 0
    for i in range(count):
        step = 1 + i % 3
        delta = continuation[position:position + step] or continuation[:step]
        position = (position + step) % max(1, len(continuation) - 3)
        start = time.perf_counter()
        propose(delta)
        times.append(time.perf_counter() - start)
    return times


def run(args) -> int:
    import json
    import tempfile
    import time
    import uuid
    from pathlib import Path

    from hola_ros.core.drafters import LocalDrafter
    from hola_ros.core.engines import load_engine
    from hola_ros.core.pipeline import answer
    from hola_ros.core.requests import GenerationRequest
    from hola_ros.core.retrieval.adacomp import AdaCompRetriever, default_index_dir
    from hola_ros.core.retrieval.ingest import demo_kb_dir
    from hola_ros.interfaces import ASK, DRAFT
    from hola_ros.local_graph import LocalGraph, wait_future
    from hola_ros.srv import Ask, Draft

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = load_engine()  # the graph's default served model
    passage = (demo_kb_dir() / "04-error-codes.md").read_text()
    prompt_ids = target.chat_ids([{"role": "user", "content": f"{passage}\n\nWhich code means the scanner is dirty?"}])
    continuation = target.encode(passage)

    # A. the draft protocol, in-process
    local = LocalDrafter(ngram=True, model=None)
    local.open("bench", prompt_ids)
    in_process = _draft_round_trips(lambda d: local.propose("bench", d, 8), prompt_ids, continuation, args.proposals)
    local.close("bench")

    # B. the same requests in-process (target + drafter + retriever in this process), the graph's default gate
    retriever = AdaCompRetriever(default_index_dir())

    def request(text, mode):
        return GenerationRequest(prompt=text, request_id=uuid.uuid4().hex, max_new_tokens=args.max_new_tokens,
                                 retrieval_mode=mode, decoding_mode="hsd")

    in_process_requests = []
    for text, mode in PROMPTS:
        start = time.perf_counter()
        outcome = answer(request(text, mode), target, drafter=local, retrieve=retriever.retrieve)
        in_process_requests.append({"prompt": text, "wall_s": time.perf_counter() - start, "text": outcome.text,
                                    "new_tokens": outcome.stats.get("new_tokens", 0)})
    del retriever

    # C. the same through the node graph
    with tempfile.TemporaryDirectory() as tmp:
        graph = LocalGraph(Path(tmp))
        try:
            graph.wait_active()
            draft = graph.node.create_client(Draft, DRAFT)
            draft.wait_for_service(timeout_sec=60)
            wait_future(draft.call_async(Draft.Request(op=Draft.Request.OPEN, request_id="bench", tokens=prompt_ids)), 30)
            ros = _draft_round_trips(
                lambda d: wait_future(draft.call_async(Draft.Request(op=Draft.Request.PROPOSE, request_id="bench",
                                                                     tokens=d, max_tokens=8)), 30),
                prompt_ids, continuation, args.proposals)
            wait_future(draft.call_async(Draft.Request(op=Draft.Request.CLOSE, request_id="bench")), 30)
            ask = graph.node.create_client(Ask, ASK)
            ask.wait_for_service(timeout_sec=60)
            graph_requests = []
            for text, mode in PROMPTS:
                start = time.perf_counter()
                response = wait_future(ask.call_async(Ask.Request(prompt=text, max_new_tokens=args.max_new_tokens,
                                                                  retrieval_mode=mode, decoding_mode="hsd")), 600)
                graph_requests.append({"prompt": text, "wall_s": time.perf_counter() - start, "text": response.text,
                                       "new_tokens": response.stats.new_tokens, "degraded": response.stats.degraded,
                                       "draft_s": response.stats.draft_s})
        finally:
            graph.stop()

    report = {"draft_round_trip": {"in_process": _percentiles(in_process), "ros_service": _percentiles(ros)},
              "requests": {"in_process": in_process_requests, "three_processes": graph_requests},
              "same_text": [a["text"] == b["text"] for a, b in zip(in_process_requests, graph_requests)]}
    (out / "transport.json").write_text(json.dumps(report, indent=2))
    lines = ["| draft round trip | p50 ms | p95 ms |", "|---|---|---|"]
    for name, figures in report["draft_round_trip"].items():
        lines.append(f"| {name} | {figures['p50_ms']:.2f} | {figures['p95_ms']:.2f} |")
    lines += ["", "| request | in-process s | 3 processes s | ratio | new tokens | same text |", "|---|---|---|---|---|---|"]
    for a, b, same in zip(in_process_requests, graph_requests, report["same_text"]):
        lines.append(f"| {a['prompt'][:48]} | {a['wall_s']:.2f} | {b['wall_s']:.2f} | {b['wall_s'] / a['wall_s']:.2f} "
                     f"| {a['new_tokens']} / {b['new_tokens']} | {same} |")
    total_a = sum(r["wall_s"] for r in in_process_requests)
    total_b = sum(r["wall_s"] for r in graph_requests)
    lines.append(f"| **all** | {total_a:.2f} | {total_b:.2f} | {total_b / total_a:.2f} | | |")
    (out / "transport.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0
