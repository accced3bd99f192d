"""hola-ros soak: many short requests through the real node graph, watching each node's RSS."""

PROMPTS = ["Where is charging dock CD-5?", "What does error E-305 mean?", "Say hello to the operator.",
           "What is the speed limit in the loading area?", "How often are the wheels cleaned?"]


def register(sub) -> None:
    parser = sub.add_parser("soak", help="long run: N short requests through a fresh graph; reports RSS growth")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20, help="requests before the RSS baseline (default 20)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--params", action="append", default=[],
                        help="parameters file for the graph, e.g. config/quality.yaml (repeatable)")
    parser.add_argument("--llamacpp", action="store_true",
                        help="then llama.cpp (make peers) holding the same models in one process answers the same "
                             "questions; its RSS beside the graph's")
    parser.add_argument("--out", default="results/soak", help="directory for soak.md / soak.json")
    parser.set_defaults(run=run)


def run(args) -> int:
    import json
    import tempfile
    import time
    from pathlib import Path

    import psutil
    from tqdm import tqdm

    from hola_ros.interfaces import ASK
    from hola_ros.local_graph import LocalGraph, wait_future
    from hola_ros.srv import Ask

    if args.requests < 1 or args.warmup < 0:
        raise SystemExit("hola-ros soak: --requests must be >= 1 and --warmup >= 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples, failures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        graph = LocalGraph(Path(tmp), params="".join(Path(p).read_text() + "\n" for p in args.params))
        try:
            graph.wait_active()
            pids = graph.node_pids()
            client = graph.node.create_client(Ask, ASK)
            client.wait_for_service(timeout_sec=60)
            started = time.monotonic()
            total = args.warmup + args.requests
            for i in tqdm(range(total), desc="soak", unit="req"):
                modes = ("auto", "off", "single")
                response = wait_future(client.call_async(Ask.Request(
                    prompt=PROMPTS[i % len(PROMPTS)], max_new_tokens=args.max_new_tokens,
                    retrieval_mode=modes[i % len(modes)], decoding_mode="hsd" if i % 2 else "ar")), 300)
                if not response.success:
                    failures.append(response.error)
                if i + 1 == args.warmup or (i + 1 > args.warmup and (i + 1 - args.warmup) % 50 == 0) or i + 1 == total:
                    rss = {name: psutil.Process(pid).memory_info().rss for name, pid in pids.items()}
                    samples.append({"requests": i + 1, "elapsed_s": time.monotonic() - started, "rss_bytes": rss})
        finally:
            graph.stop()
    base, last = samples[0], samples[-1]
    served = last["requests"] - base["requests"]
    report = {"requests_after_warmup": served, "failures": len(failures), "failure_examples": failures[:5],
              "samples": samples,
              "growth_mb": {n: (last["rss_bytes"][n] - base["rss_bytes"][n]) / 2**20 for n in base["rss_bytes"]}}
    if args.llamacpp:
        report["llamacpp"] = _llamacpp_beside(args)
        report["graph_rss_mb"] = sum(last["rss_bytes"].values()) / 2**20
        lines_peer = _peer_lines(report, last)
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    lines = [f"{served} requests after {args.warmup} warm-up requests, {len(failures)} failed, "
             f"{last['elapsed_s']:.0f} s", "", "| node | RSS after warm-up MB | RSS at end MB | growth MB | per 100 requests MB |",
             "|---|---|---|---|---|"]
    for name in sorted(base["rss_bytes"]):
        a, b = base["rss_bytes"][name] / 2**20, last["rss_bytes"][name] / 2**20
        lines.append(f"| {name} | {a:.0f} | {b:.0f} | {b - a:+.1f} | {(b - a) * 100 / max(served, 1):+.2f} |")
    if args.llamacpp:
        lines += lines_peer
    (out / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


def _served_models(params_files: list[str]) -> tuple[str, str]:
    """(verifier model, drafter l1_model) of the graph: config/hola.yaml, then the given files."""
    from hola_ros.cli._eval_kb import profile_settings
    from hola_ros.package_data import require_package_file

    found = {"model": "", "l1": ""}
    for path in [str(require_package_file("config/hola.yaml")), *params_files]:
        found.update({k: v for k, v in profile_settings(path).items() if k in found})
    return found["model"], found["l1"]


def _llamacpp_beside(args) -> dict:
    """llama.cpp in its own process holding the graph's GGUFs (a Lo-Bi engine's base GGUF), answering
    the soak's questions with the verifier's chat template, at most --max-new-tokens each."""
    import json
    import subprocess
    import sys

    from hola_ros.core.engines import load_engine_base_gguf

    target, l1 = _served_models(args.params)
    ggufs = [str(load_engine_base_gguf(spec)) for spec in (target, l1) if spec]
    prompts = _chat_prompts(target)
    request = {"ggufs": ggufs, "prompts": prompts, "max_new_tokens": args.max_new_tokens}
    done = subprocess.run([sys.executable, "-m", "hola_ros.core.llamacpp_peer", json.dumps(request)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][-300:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _chat_prompts(model: str) -> list[list[int]]:
    """The soak's questions as the verifier's chat-template tokens."""
    from hola_ros.core.engines import load_tokenizer

    tokenizer = load_tokenizer(model)
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=True) for q in PROMPTS]


def _peer_lines(report: dict, last: dict) -> list[str]:
    peer = report["llamacpp"]
    if "error" in peer:
        return ["", f"llama.cpp beside it: failed ({peer['error']})"]
    graph = report["graph_rss_mb"]
    models = sum(v for k, v in last["rss_bytes"].items() if k != "hola_retriever") / 2**20
    return ["", f"llama.cpp holding the same models ({', '.join(peer['ggufs'])}) in one process, after the same "
                f"questions: RSS {peer['rss_mb']:.0f} MB (peak {peer['peak_rss_mb']:.0f} MB). The graph: {graph:.0f} MB "
                f"in all = {graph / peer['rss_mb']:.2f}x; its verifier + drafter (the models' processes, the retriever "
                f"aside): {models:.0f} MB = {models / peer['rss_mb']:.2f}x"]
