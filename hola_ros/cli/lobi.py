"""hola-ros lobi: build a Lo-Bi compressed drafter artifact, show its manifest, benchmark it."""


def register(sub) -> None:
    parser = sub.add_parser("lobi", help="Lo-Bi compression: build / show / bench compressed drafter artifacts")
    lsub = parser.add_subparsers(dest="lobi_command", required=True, metavar="ACTION")

    b = lsub.add_parser("build", help="compress a model into a versioned artifact under a memory budget")
    b.add_argument("--budget-mb", required=True,
                   help="weight bytes allowed, in MB (1e6 bytes); a comma list builds one artifact per budget "
                        "from one calibration pass")
    b.add_argument("--model", help="base model spec (default: the served default, qwen2.5-coder-0.5b-instruct). A GGUF "
                                   "(packaged name or .gguf) is built on the engine's own formats into an engine "
                                   "that load_engine serves; a Hugging Face directory (or --torch) takes the torch "
                                   "build (low rank, recovery, TensorRT export)")
    b.add_argument("--torch", action="store_true",
                   help="the torch build for a GGUF too (float model dequantized by transformers; the low-rank study)")
    b.add_argument("--heldout-seqs", type=int, default=8,
                   help="engine build: held-out sequences for the manifest's KL / top-1 agreement (default 8)")
    b.add_argument("--calib", help="calibration JSONL/text (default: shared GSM8K train split)")
    b.add_argument("--calib-size", type=int, default=64, help="calibration samples (default 64)")
    b.add_argument("--seq-len", type=int, default=128, help="calibration sequence length (default 128)")
    b.add_argument("--search-seqs", type=int, default=8, help="sequences used to score bit widths (default 8)")
    b.add_argument("--rank-tol", type=float, default=0.02,
                   help="max relative calibration output error of a low-rank layer (default 0.02; 0.1 measured "
                        "worse on SmolLM2, see docs/lobi.md)")
    b.add_argument("--pay-ratio", type=float, default=0.6,
                   help="a layer goes low-rank only below this fraction of its dense parameters (default 0.6)")
    b.add_argument("--lowrank", action="store_true",
                   help="add the low-rank stage before the bit search (off by default: it lowered acceptance "
                        "on SmolLM2-135M at equal budget, see docs/lobi.md)")
    b.add_argument("--group", type=int, default=32, help="quantization group size (default 32)")
    b.add_argument("--recovery-s", type=float, default=0.0,
                   help="seconds of LoRA recovery tuning after the low-rank stage (default 0 = off)")
    b.add_argument("--out", help="artifact directory (default: for a packaged model's engine build, the cache folder "
                                 "where the spec <model>@<budget>mb finds it; else results/lobi/<model>-<budget>mb); "
                                 "with several budgets, the parent directory of <model>-<budget>mb artifacts")
    b.add_argument("--export", default="", help="comma list: onnx, tensorrt (dense ONNX + engine where TensorRT exists)")
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--json", action="store_true", help="print the manifest instead of the table")
    b.set_defaults(run=run_build)

    s = lsub.add_parser("show", help="print an artifact's manifest as a table")
    s.add_argument("path")
    s.add_argument("--json", action="store_true")
    s.set_defaults(run=run_show)

    e = lsub.add_parser("export", help="add ONNX / TensorRT exports to an existing artifact")
    e.add_argument("path")
    e.add_argument("--to", default="onnx", help="comma list: onnx, tensorrt (default onnx)")
    e.set_defaults(run=run_export)

    m = lsub.add_parser("bench", help="weights bytes, peak RSS, per-token latency and HSD acceptance: "
                                      "fp32 target vs Lo-Bi drafters vs an int8 copy")
    m.add_argument("artifacts", nargs="*", help="Lo-Bi artifact directories to compare")
    m.add_argument("--model", help="target model spec (default: the packaged SmolLM2-135M-Instruct)")
    m.add_argument("--backend", default="auto", help="backend for the artifacts (auto/torch/onnxruntime)")
    m.add_argument("--prompts", type=int, default=4, help="GSM8K prompts for the HSD runs (default 4)")
    m.add_argument("--max-new-tokens", type=int, default=96)
    m.add_argument("--latency-tokens", type=int, default=48, help="tokens decoded for the per-token latency")
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--no-int8", action="store_true", help="leave out the int8 copy of the target")
    m.add_argument("--out", default="results/lobi/bench.json")
    m.set_defaults(run=run_bench)


def _progress():
    from tqdm import tqdm

    bars = {}

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[stage] = tqdm(total=total, desc=f"{stage:<15}", unit="step", leave=True)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def _table(manifest: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(Console().width, 132))
    blocks = Table(title="Lo-Bi blocks (bits chosen under the budget; error = relative squared output error)")
    for col in ("block", "bits", "error", "err@4", "err@8", "err@16", "MB", "low-rank layers"):
        blocks.add_column(col, justify="right" if col != "block" else "left")
    ranks: dict[str, list[str]] = {}
    from hola_ros.core.lobi.arch import block_of

    for name, layer in manifest["layers"].items():
        if layer["rank"]:
            ranks.setdefault(block_of(name), []).append(f"{name.rsplit('.', 1)[-1]}:{layer['rank']}")
    for name, b in manifest["blocks"].items():
        e = b["errors"]
        blocks.add_row(name, str(b["bits"]), f"{b['error']:.1e}", f"{e['4']:.1e}", f"{e['8']:.1e}", f"{e['16']:.1e}",
                       f"{b['bytes'] / 1e6:.2f}", " ".join(ranks.get(name, [])) or "-")
    con.print(blocks)
    by = manifest["bytes"]
    rows = [("base", f"{manifest['base']['id']} ({manifest['base']['sha256'][:12]})"),
            ("budget", f"{manifest['quant']['budget_mb']} MB (min feasible {manifest['quant']['min_feasible_mb']:.1f})"),
            ("weights", f"{by['weights'] / 1e6:.1f} MB = {by['weights'] / by['base_fp32']:.3f} x fp32 "
                        f"({by['base_fp32'] / 1e6:.0f} MB)"),
            ("on disk", f"{by['on_disk'] / 1e6:.1f} MB"),
            ("low-rank layers", str(sum(1 for lay in manifest["layers"].values() if lay["rank"]))),
            ("calibration", f"{manifest['calibration']['samples']} samples, {manifest['calibration']['tokens']} tokens"),
            ("block error sum", f"{manifest['error']['block_error_sum']:.3e}"),
            ("logits rel. error", f"{manifest['error']['logits_rel_error']:.3f}"),
            ("top-1 agreement", f"{manifest['error']['top1_agreement']:.3f}"),
            ("exports", ", ".join(manifest.get("exports", {})) or "-")]
    _print_summary(con, rows)


def _command(args, model: str) -> str:
    """The build as a command line with every option spelled out (defaults included), to reproduce it."""
    import shlex

    parts = ["hola-ros", "lobi", "build", "--budget-mb", str(args.budget_mb), "--model", str(model)]
    engine = _is_gguf(model) and not args.torch
    torch_opts = ("search_seqs", "rank_tol", "pay_ratio", "group", "recovery_s", "export")
    for opt in ("calib", "calib_size", "seq_len", "out", "threads") + (("heldout_seqs",) if engine else torch_opts):
        value = getattr(args, opt)
        if value not in (None, ""):
            parts += [f"--{opt.replace('_', '-')}", str(value)]
    if args.lowrank:
        parts.append("--lowrank")
    if args.torch:
        parts.append("--torch")
    return " ".join(shlex.quote(p) for p in parts)


def _is_gguf(model: str) -> bool:
    from hola_ros.core.model_store import is_packaged

    return is_packaged(model) or str(model).lower().endswith(".gguf")


def run_build(args) -> int:
    import json
    import os
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hola_ros.core.lobi.search import BudgetError
    from hola_ros.core.model_store import DEFAULT_MODEL, is_packaged, lobi_engine_dir

    model = args.model or DEFAULT_MODEL
    engine = _is_gguf(model) and not args.torch
    torch_only = [opt for opt, on in (("--lowrank", args.lowrank), ("--recovery-s", args.recovery_s),
                                      ("--export", args.export)) if on]
    if engine and torch_only:
        print(f"error: {', '.join(torch_only)} belong to the torch build; add --torch (or give a Hugging Face "
              "model directory)", file=sys.stderr)
        return 2
    try:
        budgets = [float(b) for b in str(args.budget_mb).split(",") if b.strip()]
    except ValueError:
        print(f"error: --budget-mb takes numbers (MB), not {args.budget_mb!r}", file=sys.stderr)
        return 2
    stem = os.path.basename(str(model).rstrip("/"))
    if len(budgets) == 1 and args.out:
        targets = [(args.out, budgets[0])]
    elif engine and is_packaged(model) and not args.out:  # where the spec NAME@BUDGETmb finds it
        targets = [(str(lobi_engine_dir(f"{model}@{b:g}mb")), b) for b in budgets]
    else:
        parent = args.out or os.path.join("results", "lobi")
        targets = [(os.path.join(parent, f"{stem}-{b:g}mb"), b) for b in budgets]
    export = tuple(x.strip() for x in args.export.split(",") if x.strip())
    try:
        if engine:
            from hola_ros.core.lobi.engine_build import build_engine_artifacts

            manifests = build_engine_artifacts(targets, model=model, calib=args.calib, calib_size=args.calib_size,
                                               seq_len=args.seq_len, heldout_seqs=args.heldout_seqs,
                                               threads=args.threads, progress=None if args.json else _progress(),
                                               command=_command(args, model))
        else:
            from hola_ros.core.lobi.build import build_artifacts

            manifests = build_artifacts(targets, model=model, calib=args.calib, calib_size=args.calib_size,
                                        seq_len=args.seq_len, search_seqs=args.search_seqs, rank_tol=args.rank_tol,
                                        pay_ratio=args.pay_ratio, group=args.group, lowrank=args.lowrank,
                                        recovery_s=args.recovery_s, export=export, threads=args.threads,
                                        progress=None if args.json else _progress(),
                                        command=_command(args, model))
    except (BudgetError, ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for (out, _), manifest in zip(targets, manifests):
        if args.json:
            print(json.dumps(manifest, indent=2))
        else:
            (_engine_table if manifest.get("kind") == "engine" else _table)(manifest)
            print(f"artifact: {out}")
    return 0


def _engine_table(manifest: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(Console().width, 132))
    blocks = Table(title="Lo-Bi engine blocks (format chosen under the budget; error = activation-weighted relative "
                         "squared error of the block's linears against the GGUF's codes)")
    formats = manifest["quant"]["formats"]
    for col in ("block", "format", "MB", *(f"err {f}" for f in formats), *(f"MB {f}" for f in formats)):
        blocks.add_column(col, justify="left" if col in ("block", "format") else "right")
    for name, b in manifest["blocks"].items():
        errs = [f"{b['errors'][f]:.1e}" if f in b["errors"] else "-" for f in formats]
        sizes = [f"{b['bytes_by_format'][f] / 1e6:.1f}" if f in b["bytes_by_format"] else "-" for f in formats]
        blocks.add_row(name, b["format"], f"{b['bytes'] / 1e6:.2f}", *errs, *sizes)
    con.print(blocks)
    by, q = manifest["bytes"], manifest["quality"]
    rows = [("base", f"{manifest['base']['spec']} ({manifest['base']['gguf_sha256'][:12]})"),
            ("budget", f"{manifest['quant']['budget_mb']:g} MB (min feasible {manifest['quant']['min_feasible_mb']:.1f})"),
            ("weights", f"{by['weights'] / 1e6:.1f} MB = {by['weights'] / by['reference_engine']:.3f} x the GGUF "
                        f"engine ({by['reference_engine'] / 1e6:.1f} MB; GGUF file {by['gguf'] / 1e6:.1f} MB)"),
            ("requantized linears", str(len(manifest["quant"]["requantized"]))),
            ("KL per token", f"{q['kl_per_token']:.4f} (vs the GGUF engine, {q['tokens']} held-out tokens)"),
            ("top-1 agreement", f"{q['top1_agreement']:.3f}"),
            ("row-invariant", str(manifest["row_invariant"]))]
    _print_summary(con, rows)


def _print_summary(con, rows: list[tuple[str, str]]) -> None:
    from rich.table import Table

    summary = Table(title="Summary", show_header=False)
    summary.add_column("k")
    summary.add_column("v")
    for k, v in rows:
        summary.add_row(k, v)
    con.print(summary)


def run_show(args) -> int:
    import json

    from hola_ros.core.lobi import read_manifest

    manifest = read_manifest(args.path)
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        (_engine_table if manifest.get("kind") == "engine" else _table)(manifest)
    return 0


def run_export(args) -> int:
    from hola_ros.core.lobi.build import export_artifact

    manifest = export_artifact(args.path, [x.strip() for x in args.to.split(",") if x.strip()], _progress())
    for name, entry in manifest["exports"].items():
        print(f"{name}: {entry.get('path') or entry.get('engine')}")
    return 0


def run_bench(args) -> int:
    import json
    import os
    from pathlib import Path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hola_ros.core.lobi.bench import print_table, run

    report = run(args.artifacts, model=args.model, backend=args.backend, prompts=args.prompts,
                 max_new_tokens=args.max_new_tokens, latency_tokens=args.latency_tokens, threads=args.threads,
                 int8=not args.no_int8)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"report: {args.out}")
    return 0
