"""`hola-ros report`: one command that measures accuracy, speed and memory (eval, the speed
benchmark against llama.cpp on the same GGUF, Lo-Bi when an artifact is given, acceptance vs draft
length) and writes REPORT.md with PNG plots."""
import argparse

from hola_ros.package_data import gsm8k_train

DEFAULT_DATA = str(gsm8k_train())


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="measure everything on one model and write REPORT.md + PNG plots",
                              description="Runs `eval` (resumable), `bench` (llama.cpp / AR / HSD, each in its "
                                          "own process), `lobi bench` with --lobi, and a draft-length "
                                          "sweep, then writes <out>/REPORT.md, PNGs and measurements.json.")
    p.add_argument("--data", default=DEFAULT_DATA, help="GSM8K-format JSONL for the eval")
    p.add_argument("--arc", default=None, help="ARC-format JSONL: also evaluate multiple choice")
    p.add_argument("--limit", type=int, default=10, help="eval items (default 10)")
    p.add_argument("--offset", type=int, default=100, help="skip the eligible items the gate was calibrated on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None)
    p.add_argument("--configs", default=None, help="eval configurations (default ar,hsd,hsd_rag,entropy_gate[,lobi])")
    p.add_argument("--l1", default="int8", help="L1 drafter of the HSD configurations ('none': L0 only)")
    p.add_argument("--lobi", default=None, help="Lo-Bi artifact: eval 'lobi' configuration + lobi bench")
    p.add_argument("--max-new-tokens", type=int, default=192, help="eval answer length cap (default 192)")
    p.add_argument("--eval-out", default=None, help="eval run folder to reuse/resume (default <out>/eval-gsm8k)")
    p.add_argument("--bench-prompts", type=int, default=2, help="prompts per set in the speed benchmark (default 2)")
    p.add_argument("--bench-tokens", type=int, default=128, help="tokens per benchmark run (default 128)")
    p.add_argument("--no-bench", action="store_true", help="leave out the speed benchmark")
    p.add_argument("--sweep-lengths", default="1,2,4,8,16", help="draft lengths of the acceptance sweep ('' = none)")
    p.add_argument("--sweep-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="results/report")
    p.set_defaults(run=run)


def _bench(args, out, log) -> dict:
    """The speed benchmark (llama.cpp, AR, HSD; each in its own process) on the report's model."""
    import json
    from pathlib import Path

    from hola_ros.cli import bench

    l1 = args.l1 if args.l1 not in (None, "none") else None
    ns = argparse.Namespace(model=args.model, l1=l1, max_new_tokens=args.bench_tokens, n_passage=args.bench_prompts,
                            n_gsm8k=args.bench_prompts, gsm8k=args.data, kb=None, systems=None, no_curve=False,
                            threads=args.threads or 2, out=str(Path(out) / "bench"))
    try:
        bench.run(ns)
        return json.loads((Path(ns.out) / "results.json").read_text())
    except Exception as exc:  # a failing peer must not cost the rest of the report
        log(f"bench failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}


def run(args: argparse.Namespace) -> int:
    import os
    import platform
    import sys
    import time
    from pathlib import Path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hola_ros.cli.eval import run_eval, settings_from
    from hola_ros.core.evaluation import report, runner

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    out = Path(args.out)
    m = {"meta": {"command": "hola-ros " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                  "load_average": os.getloadavg()}}

    def eval_for(task, data, folder):
        ns = argparse.Namespace(task=task, data=data, limit=args.limit, offset=args.offset if task == "gsm8k" else 0,
                                seed=args.seed, model=args.model, configs=args.configs,
                                max_new_tokens=args.max_new_tokens if task == "gsm8k" else None,
                                temperature=0.0, l1=args.l1, lobi=args.lobi, tau=1.5, rag_source=DEFAULT_DATA,
                                threads=args.threads, out=folder)
        settings = settings_from(ns)
        summary = run_eval(settings, log=log)
        ids = {it.id for it in runner.load_items(settings)[0]}
        rows = runner.ResultsFile(Path(settings.out) / "results.jsonl").rows()
        summary["rows"] = [r for r in rows if r["id"] in ids and r["config"] in settings.configs]
        return summary

    m["eval"] = eval_for("gsm8k", args.data, args.eval_out or str(out / "eval-gsm8k"))
    if args.arc:
        m["arc"] = eval_for("arc", args.arc, str(out / "eval-arc"))

    # before any model is loaded here: the lobi bench's child processes start as copies of this one,
    # and a child's peak RSS counts what it was forked with
    m["lobi_bench"] = m["lobi_bits"] = None
    if args.lobi:
        from hola_ros.core.lobi import read_manifest
        from hola_ros.core.lobi.bench import run as lobi_bench

        m["lobi_bench"] = lobi_bench([args.lobi], model=args.model, prompts=args.bench_prompts,
                                     threads=args.threads or 2, log=log)
        bits = [str(b["bits"]) for b in read_manifest(args.lobi)["blocks"].values()]
        m["lobi_bits"] = {b: bits.count(b) for b in sorted(set(bits), key=int)}

    m["bench"] = {"error": "left out (--no-bench)"} if args.no_bench else _bench(args, out, log)
    from hola_ros.core.engines import load_engine, load_l1

    target = load_engine(args.model, threads=args.threads)

    lengths = [int(x) for x in args.sweep_lengths.split(",") if x.strip()]
    if lengths:
        from hola_ros.core.drafters import LocalDrafter

        l1 = load_l1(None if args.l1 in (None, "none") else args.l1, args.model, threads=args.threads)
        questions = [r["question"] for r in m["eval"]["rows"] if r["config"] == m["eval"]["rows"][0]["config"]][:2] \
            if m["eval"]["rows"] else []
        prompts = [target.chat_ids([{"role": "user", "content": q}]) for q in questions]
        log(f"draft-length sweep {lengths} on {len(prompts)} prompts")
        m["draft_sweep"] = {"drafter": "L0 n-gram" + (f" + L1 {args.l1}" if l1 is not None else ""),
                            "prompts": len(prompts), "max_new_tokens": args.sweep_tokens,
                            "rows": report.draft_sweep(target, prompts, lambda: LocalDrafter(ngram=True, model=l1),
                                                       lengths, args.sweep_tokens) if prompts else []}
    m["meta"]["load_average_end"] = os.getloadavg()
    path = report.build_report(m, out)
    log(f"wrote {path} and {', '.join(report.PLOTS)}")
    return 0
