"""`hola-ros eval`: accuracy, latency, speed and memory per decoding configuration on GSM8K or
ARC, resumable (one JSON line per sample in <out>/results.jsonl)."""
import argparse

from hola_ros.cli._eval_commands import add_arguments as add_commands_arguments
from hola_ros.cli._eval_commands import run_commands
from hola_ros.cli._eval_kb import KB_CONFIG_HELP, run_kb
from hola_ros.cli._eval_kb import add_arguments as add_kb_arguments
from hola_ros.package_data import gsm8k_train

CONFIG_HELP = ("comma list from ar, hsd, hsd_rag, lobi, entropy_gate (default ar,hsd,hsd_rag,entropy_gate, "
               "plus lobi with --lobi)")


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="accuracy + speed + memory per configuration (GSM8K EMA, ARC MCA, KB)",
                              description="Evaluate AR, HSD, HSD+AdaComp-RAG, a Lo-Bi-served model and the paper's "
                                          "lossy entropy gate on the same items. Each configuration runs in its own "
                                          "process (so peak RSS is its own); rerunning the same command resumes. "
                                          "`eval kb`: answer accuracy, retrieval recall, context tokens, latency and "
                                          "levels per retrieval configuration over a document index "
                                          "(docs/retrieval.md). `eval commands`: tool-call validity and intended-call accuracy on "
                                          "the command dev set, constrained and unconstrained (docs/constraints.md).")
    p.add_argument("task", choices=("gsm8k", "arc", "kb", "commands"))
    p.add_argument("--data", required=True, help="GSM8K-format JSONL (question, answer '#### n'), ARC JSONL, or KB "
                                                 "questions (data/kb_eval/questions.jsonl)")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most N items")
    p.add_argument("--offset", type=int, default=0,
                   help="skip the first N eligible items (calibrate-gate fits the gate on the first 100 GSM8K "
                        "items held out of the index; use --offset 100 to evaluate on others)")
    p.add_argument("--seed", type=int, default=0, help="shuffles the eligible items before --limit; sampling seed")
    p.add_argument("--model", default=None, help="target model spec (default: the served default, "
                                                  "qwen2.5-coder-0.5b-instruct)")
    p.add_argument("--configs", default=None, help=CONFIG_HELP + "; " + KB_CONFIG_HELP)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 256 (gsm8k), 16 (arc)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--l1", default="int8", help="L1 drafter for the HSD configurations: 'int8', a model spec, a "
                                                "Lo-Bi artifact, or 'none' (L0 n-gram only)")
    p.add_argument("--lobi", default=None, help="Lo-Bi artifact served as the target of the 'lobi' configuration")
    p.add_argument("--tau", type=float, default=1.5, help="entropy gate threshold (paper: 1.5)")
    p.add_argument("--rag-source", default=str(gsm8k_train()),
                   help="GSM8K-format file whose worked examples (folds 1-4) form the hsd_rag index; 'none' = no RAG")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="run folder (default results/eval/<task>); reuse it to resume")
    p.add_argument("--in-process", action="store_true", help="run every configuration in this process "
                                                             "(peak RSS then accumulates across them)")
    p.add_argument("--json", action="store_true", help="print one JSON object: configuration -> figures")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    add_kb_arguments(p)
    add_commands_arguments(p)
    p.set_defaults(run=run)


def settings_from(args):
    from hola_ros.core.evaluation.runner import EvalSettings

    configs = args.configs or "ar,hsd,hsd_rag,entropy_gate" + (",lobi" if args.lobi else "")
    none = lambda v: None if v in (None, "", "none") else v  # noqa: E731
    return EvalSettings(task=args.task, data=args.data, configs=tuple(c.strip() for c in configs.split(",") if c.strip()),
                        model=args.model, limit=args.limit, offset=args.offset, seed=args.seed,
                        max_new_tokens=args.max_new_tokens, l1=none(args.l1), lobi=none(args.lobi), tau=args.tau,
                        temperature=args.temperature, rag_source=none(args.rag_source), threads=args.threads,
                        out=args.out or f"results/eval/{args.task}")


def worker_argv(settings, config: str) -> list[str]:
    """The command line that evaluates one configuration of `settings` in a child process."""
    import sys

    argv = [sys.executable, "-m", "hola_ros.cli", "eval", settings.task, "--data", str(settings.data),
            "--configs", config, "--offset", str(settings.offset), "--seed", str(settings.seed),
            "--max-new-tokens", str(settings.max_new_tokens), "--temperature", str(settings.temperature),
            "--l1", settings.l1 or "none", "--tau", str(settings.tau), "--rag-source", settings.rag_source or "none",
            "--out", str(settings.out), "--worker"]
    for opt, value in (("--limit", settings.limit), ("--model", settings.model), ("--lobi", settings.lobi),
                       ("--threads", settings.threads)):
        if value is not None:
            argv += [opt, str(value)]
    return argv


def run_eval(settings, isolate: bool = True, log=print) -> dict:
    """Evaluate every configuration (each in its own process unless isolate=False); returns
    {"meta": ..., "items": ..., "configs": {config: figures}} and writes it to <out>/summary.json."""
    import dataclasses
    import json
    import os
    import platform
    import subprocess
    import time
    from pathlib import Path

    from hola_ros.core.evaluation import runner

    items, info = runner.load_items(settings)
    runner.check_run(settings.out, settings)
    results = runner.ResultsFile(Path(settings.out) / "results.jsonl")
    resources = runner.Resources(settings)
    skipped, failed = {}, {}
    t0 = time.time()
    for c in settings.configs:
        reason = runner.skip_reason(c, settings, resources)
        if reason:
            skipped[c] = reason
            log(f"{c}: skipped ({reason})")
        elif not isolate:
            runner.run_config(c, items, settings, resources, results, log=log)
        else:
            env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]) + os.pathsep
                       + os.environ.get("PYTHONPATH", ""))
            rc = subprocess.run(worker_argv(settings, c), env=env).returncode
            if rc != 0:
                failed[c] = f"worker exited with status {rc} (its error is above)"
    configs = runner.summarize(results.rows(), items, settings.configs, skipped, settings.task)
    for c, why in failed.items():
        configs[c]["error"] = why
    meta = {"settings": dataclasses.asdict(settings), "isolated_processes": isolate, "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "load_average_end": os.getloadavg(),
            "wall_s": round(time.time() - t0, 1), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    summary = {"meta": meta, "items": info, "configs": configs}
    (Path(settings.out) / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    task = summary["meta"]["settings"]["task"]
    table = Table(title=f"eval {task}: {summary['items']['n']} items, {summary['meta']['settings']['out']}")
    cols = ["config", "n", "accuracy"] + (["letter acc."] if task == "arc" else []) + [
        "p50 s", "p95 s", "tok/s", "x AR", "=AR text", "peak RSS MB", "accept", "retrieval levels"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("config", "retrieval levels") else "right")
    fmt = lambda v, f="{:.3f}": "-" if v is None else f.format(v)  # noqa: E731
    for c, fig in summary["configs"].items():
        if "skipped" in fig:
            table.add_row(c, "0", f"skipped: {fig['skipped']}", *[""] * (len(cols) - 3))
            continue
        row = [c + (" (lossy)" if fig.get("lossy") else ""), str(fig["n"]), fmt(fig["accuracy"])]
        if task == "arc":
            row.append(fmt(fig.get("accuracy_letter")))
        row += [fmt(fig["latency_p50_s"], "{:.2f}"), fmt(fig.get("latency_p95_s"), "{:.2f}"),
                fmt(fig["tokens_per_s"], "{:.1f}"), fmt(fig.get("speedup_vs_ar"), "{:.2f}"),
                fmt(fig.get("same_text_as_ar"), "{:.2f}"), fmt(fig.get("peak_rss_mb"), "{:.0f}"),
                fmt(fig.get("acceptance_rate")), " ".join(f"{k}:{v}" for k, v in fig.get("retrieval_levels", {}).items())]
        table.add_row(*row)
    Console(stderr=True).print(table)


def run(args: argparse.Namespace) -> int:
    import json
    import os
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.task == "kb":
        return run_kb(args)
    if args.task == "commands":
        return run_commands(args)
    from hola_ros.core.evaluation import runner

    try:
        settings = settings_from(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.worker:
        items, _ = runner.load_items(settings)
        runner.evaluate(settings, log=log, items=items)
        return 0
    try:
        summary = run_eval(settings, isolate=not args.in_process, log=log)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary["configs"]))
    else:
        print_table(summary)
    log(f"wrote {settings.out}/results.jsonl and summary.json")
    failed = [c for c, fig in summary["configs"].items() if "error" in fig]
    return 1 if failed else 0
