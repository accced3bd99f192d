"""`hola-ros eval kb`: the options and the run of the KB evaluation (core/evaluation/kb.py)."""


def add_arguments(p) -> None:
    g = p.add_argument_group("kb (hola-ros eval kb --data QA.jsonl)")
    g.add_argument("--split", default="heldout", choices=("tune", "heldout", "all"),
                   help="kb: which half of the question set (default heldout)")
    g.add_argument("--index", default=None, help="kb: index directory (default: the packaged demo KB's)")
    g.add_argument("--retrieval-only", action="store_true",
                   help="kb: retrieval recall, context tokens and levels only, no LM (fast, deterministic)")
    g.add_argument("--decoding", default="hsd", choices=("hsd", "ar"),
                   help="kb: hsd (L0 n-gram drafter; lossless, so the same answers as ar) or ar")
    g.add_argument("--gate-model", default="smollm2-135m-instruct", help="kb: LM of the auto_gradient gate")
    g.add_argument("--budget-tokens", type=int, default=None, help="kb: context budget (default: the retriever's)")
    g.add_argument("--thresholds", default=None, help="kb: gate thresholds YAML (default: the packaged one)")
    g.add_argument("--no-document-lookup", dest="document_lookup", action="store_false",
                   help="kb: every grounded answer from the model, also where a code's table row or a FAQ "
                        "entry would answer")
    g.add_argument("--profile", metavar="PARAMS.yaml", default=None,
                   help="kb: a node parameters file (config/quality.yaml): its verifier model and general_prompt "
                        "and its drafter l1_model, unless --model / --l1 say otherwise")


def profile_settings(path) -> dict:
    """model, l1, general_prompt and document_lookup of a node parameters file (hola-ros up --params FILE)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a ROS 2 parameters file")
    params = {}
    for key, node in doc.items():
        p = (node or {}).get("ros__parameters", {}) if isinstance(node, dict) else {}
        if str(key).endswith("hola_verifier"):
            params.update({k: p[k] for k in ("model", "general_prompt", "document_lookup") if k in p})
        elif str(key).endswith("hola_drafter") and "l1_model" in p:
            params["l1"] = p["l1_model"]
    return params


KB_CONFIG_HELP = "kb: comma list from off, single, multi, auto, auto_gradient (default off,single,auto)"


def run_kb(args) -> int:
    import json
    import sys
    from pathlib import Path

    from hola_ros.core.evaluation import kb
    from hola_ros.core.evaluation.runner import ResultsFile, check_run

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    try:
        configs = tuple(c.strip() for c in (args.configs or "off,single,auto").split(",") if c.strip())
        profile = profile_settings(args.profile) if args.profile else {}
        l1 = profile.get("l1") if args.l1 in (None, "int8") else args.l1
        settings = kb.KBSettings(data=args.data, configs=configs, split=args.split,
                                 model=args.model or profile.get("model"), index=args.index,
                                 retrieval_only=args.retrieval_only, decoding=args.decoding,
                                 l1=None if l1 in (None, "", "none", "int8") else l1,
                                 general_prompt=profile.get("general_prompt", ""), gate_model=args.gate_model,
                                 document_lookup=args.document_lookup and bool(profile.get("document_lookup", True)),
                                 max_new_tokens=args.max_new_tokens or 96,
                                 budget_tokens=args.budget_tokens, thresholds=args.thresholds,
                                 threads=args.threads, limit=args.limit,
                                 out=args.out or "results/eval/kb" + ("-retrieval" if args.retrieval_only else ""))
        items = kb.load_items(args.data, settings.split)[:args.limit]
        check_run(settings.out, settings)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = ResultsFile(Path(settings.out) / "results.jsonl")
    summary = kb.evaluate(settings, items, kb.KBResources(settings), results, log=log)
    report = {"settings": {k: v for k, v in vars(settings).items()}, "n": len(items), "configs": summary}
    (Path(settings.out) / "summary.json").write_text(json.dumps(report, indent=1) + "\n")
    if args.json:
        print(json.dumps(summary))
    else:
        print_kb_table(summary, f"eval kb: {len(items)} questions ({settings.split}), {settings.out}")
    return 0


def print_kb_table(summary: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    cols = ("config", "n", "accuracy", "answerable", "refusals", "general", "recall", "all facts", "ctx tok",
            "latency p50 s", "mean s", "cites", "levels")
    table = Table(title=title)
    for col in cols:
        table.add_column(col, justify="left" if col in ("config", "levels") else "right")
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    for c, f in summary.items():
        table.add_row(c, str(f["n"]), fmt(f.get("accuracy")), fmt(f.get("answerable_accuracy")),
                      fmt(f.get("correct_refusals")), fmt(f.get("accuracy_by_kind", {}).get("general")),
                      fmt(f.get("retrieval_recall")), fmt(f.get("all_facts_in_context")),
                      fmt(f.get("mean_context_tokens")), fmt(f.get("latency_p50_s")), fmt(f.get("latency_mean_s")),
                      fmt(f.get("cites_source")), " ".join(f"L{k}:{v}" for k, v in f.get("levels", {}).items()))
    Console(stderr=True, width=200).print(table)
