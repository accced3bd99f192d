"""hola-ros bench-split: the graph split between a robot and an edge server (drafter + retriever +
client on the robot, verifier on the edge), joined by a link with delay and loss, against the
whole graph on one host; then the link cut mid-answer. Needs root for network namespaces
(hola_ros.netsplit); says why and exits 2 where they cannot be made."""

ROBOT_NODES, EDGE_NODES = ["hola_retriever", "hola_drafter"], ["hola_verifier"]


def register(sub) -> None:
    parser = sub.add_parser("bench-split", help="split deployment over DDS (robot / edge network namespaces) vs "
                                                "one host: tokens/s, acceptance, link-cut behaviour")
    parser.add_argument("--delay-ms", type=float, default=5.0, help="one-way link delay, each direction (default 5)")
    parser.add_argument("--loss-pct", type=float, default=1.0, help="link loss, each direction (default 1)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the prompt set per configuration")
    parser.add_argument("--params", metavar="FILE", help="extra parameters file for every node (e.g. to pin the model)")
    parser.add_argument("--liveness", type=float, default=3.0, help="client liveness in the link-cut trial (s)")
    parser.add_argument("--cut-hold-s", type=float, default=0.0,
                        help="keep the link down at least this long (default: until the client has given up)")
    parser.add_argument("--out", default="results/split", help="directory for split.md / split.json")
    parser.set_defaults(run=run)


def _measure(graph, prompts, repeats: int, max_new_tokens: int) -> list[dict]:
    rows = []
    graph.ask_json("Say hello.", "--max-new-tokens", "4", "--retrieval", "off")  # warm-up, not counted
    for _ in range(repeats):
        for text, mode in prompts:
            answer = graph.ask_json(text, "--max-new-tokens", str(max_new_tokens), "--retrieval", mode)
            stats = answer.get("stats") or {}
            rows.append({"prompt": text, "success": bool(answer.get("success")), "error": answer.get("error", ""),
                         **{k: stats.get(k) for k in ("new_tokens", "tokens_per_s", "acceptance_rate", "draft_s",
                                                      "retrieval_s", "total_s", "degraded", "flags")}})
    return rows


def _summary(rows: list[dict]) -> dict:
    import statistics

    ok = [r for r in rows if r["success"]]

    def mean(key):
        return statistics.fmean(r[key] for r in ok) if ok else float("nan")

    return {"requests": len(rows), "answered": len(ok), "degraded": sum(bool(r["degraded"]) for r in ok),
            "tokens_per_s": mean("tokens_per_s"), "acceptance": mean("acceptance_rate"),
            "draft_s": mean("draft_s"), "retrieval_s": mean("retrieval_s"), "total_s": mean("total_s")}


def _run_config(config: dict, args, params: str, prompts, work) -> dict:
    from hola_ros.local_graph import default_domain_id
    from hola_ros.netsplit import SplitGraph, SplitNetwork, link_cut_trial

    name, shape, edge_nodes = config["name"], config["shape"], config["edge"]
    print(f"[bench-split] {name}: starting ({shape})", flush=True)
    with SplitNetwork(shape) as net:
        slug = "".join(c if c.isalnum() else "_" for c in name)
        graph = SplitGraph(net, work / slug, params, config["robot"], edge_nodes, default_domain_id(),
                           config["dds_profile"])
        try:
            graph.wait_active()
            before = net.counters()
            rows = _measure(graph, prompts, args.repeats, args.max_new_tokens)
            link = {k: v - before[k] for k, v in net.counters().items()}
            cut = (link_cut_trial(net, graph, liveness_s=args.liveness, hold_s=args.cut_hold_s)
                   if config["cut"] else None)
        finally:
            graph.stop()
        link_used = f"{shape} ({net.kind})" if edge_nodes else "none: every node in the robot namespace"
        if config["dds_profile"]:
            link_used += f", Fast DDS profile {config['dds_profile'].name}"
        return {"name": name, "link": link_used, "rows": rows, "summary": _summary(rows),
                "link_counters": link, "link_cut": cut}


def _report(results: list[dict], load: tuple, args) -> str:
    lines = [f"load average at start {load[0]:.2f}, at end {load[1]:.2f}; {args.repeats} x "
             f"{len(results[0]['rows']) // max(args.repeats, 1)} requests, at most {args.max_new_tokens} new tokens",
             "", "| configuration | link | answered | degraded | tokens/s | acceptance | draft s / request | "
             "total s / request | link packets rx+tx |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s, c = r["summary"], r["link_counters"]
        lines.append(f"| {r['name']} | {r['link']} | {s['answered']}/{s['requests']} | "
                     f"{s['degraded']} | {s['tokens_per_s']:.2f} | {s['acceptance']:.3f} | {s['draft_s']:.3f} | "
                     f"{s['total_s']:.2f} | {c['rx_packets'] + c['tx_packets']} |")
    for r in results:
        cut = r["link_cut"]
        if cut:
            lines += ["", f"Link cut ({r['name']}): streaming before the cut: {cut['streaming_before_cut']}; the client "
                          f"gave up after {cut['client_gave_up_after_s']:.1f} s with exit code {cut['client_exit_code']}: "
                          f"`{cut['client_error']}`; the link was down {cut['down_s']:.1f} s; after the restore the "
                          f"graph answered again: {cut['served_again']} "
                          f"(after {cut['served_again_after_s']:.1f} s, degraded: "
                          f"{(cut['again'].get('stats') or {}).get('degraded')}); same node processes: "
                          f"{cut['same_processes']}"]
    return "\n".join(lines) + "\n"


def run(args) -> int:
    import json
    import os
    import signal
    import sys
    import tempfile
    from pathlib import Path

    from hola_ros.cli.bench_transport import PROMPTS
    from hola_ros.netsplit import LinkShape, NetnsUnavailable, lossy_link_profile

    if (args.delay_ms < 0 or not 0 <= args.loss_pct < 100 or args.repeats < 1 or args.max_new_tokens < 1
            or args.cut_hold_s < 0 or args.liveness <= 0):
        raise SystemExit("hola-ros bench-split: need --delay-ms >= 0, --loss-pct in [0, 100), --repeats >= 1, "
                         "--max-new-tokens >= 1, --cut-hold-s >= 0, --liveness > 0")
    # SIGTERM unwinds like Ctrl-C, so the graphs stop and the namespaces are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    params = Path(args.params).read_text() if args.params else ""
    impaired, clean = LinkShape(args.delay_ms, args.loss_pct), LinkShape(0.0, 0.0)
    load_start = os.getloadavg()[0]
    split = {"robot": ROBOT_NODES, "edge": EDGE_NODES, "dds_profile": None, "cut": False}
    configs = [{**split, "name": "one host", "shape": clean, "robot": ROBOT_NODES + EDGE_NODES, "edge": []},
               {**split, "name": "split, clean link", "shape": clean},
               {**split, "name": "split, impaired link", "shape": impaired},
               {**split, "name": "split, impaired link, tuned DDS", "shape": impaired,
                "dds_profile": lossy_link_profile(), "cut": True}]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results = [_run_config(config, args, params, PROMPTS, Path(tmp)) for config in configs]
    except NetnsUnavailable as exc:
        print(f"hola-ros bench-split: cannot run here: {exc}")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = _report(results, (load_start, os.getloadavg()[0]), args)
    (out / "split.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "split.md").write_text(report)
    print(report)
    return 0
