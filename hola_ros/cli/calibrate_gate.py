"""hola-ros calibrate-gate: fit the AdaComp gate's weights and thresholds on development data."""

from hola_ros.package_data import gsm8k_train

DEFAULT_DATA = str(gsm8k_train())


def register(sub) -> None:
    p = sub.add_parser("calibrate-gate", help="calibrate the retrieval gate thresholds on dev data (writes YAML)",
                       description="GSM8K-format data (question / answer with '#### <number>'): the held-out "
                                   "fold is the dev set, the other folds the worked-example index. Other data: "
                                   "--index DIR plus --data with question/answer fields.")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"dev data JSONL (default {DEFAULT_DATA})")
    p.add_argument("--index", help="use this index instead of building one from the other GSM8K folds")
    p.add_argument("--model", default="smollm2-135m-instruct", help="gate LM spec for hola_ros.core.models")
    p.add_argument("--limit", type=int, default=100, help="dev questions to use (default 100)")
    p.add_argument("--dev-fold", type=int, default=0)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--margin", type=float, default=0.02, help="NLL gain (nats/token) that counts as 'helps'")
    p.add_argument("--no-multi", action="store_true", help="skip the multi-step measurement (delta2 = 1)")
    p.add_argument("--budget-tokens", type=int, default=384)
    p.add_argument("--follow-up-tokens", type=int, default=24, help="max tokens of a follow-up query")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="config/gate_thresholds.yaml")
    p.add_argument("--rows", help="also save the per-question measurements to this JSONL")
    p.add_argument("--from-rows", help="refit from measurements saved with --rows (no model runs)")
    p.add_argument("--kb", metavar="QA.jsonl",
                   help="calibrate on KB questions instead (data/kb_eval/questions.jsonl): the evidence gate "
                        "(default) and the gradient gate on --model ('none' skips it), from retrieval utilities")
    p.add_argument("--split", default="tune", choices=("tune", "heldout", "all"), help="--kb: questions used")
    p.set_defaults(run=run)


def run(args) -> int:
    import json
    import os
    import sys
    import time

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hola_ros.core.engines import load_engine
    from hola_ros.core.retrieval import calibrate, gsm8k
    from hola_ros.core.retrieval.adacomp import AdaCompRetriever, lm_follow_up

    t0 = time.perf_counter()
    if args.kb:
        return _calibrate_kb(args)
    if args.from_rows:
        with open(args.from_rows, encoding="utf-8") as f:
            saved = [json.loads(line) for line in f]
        meta, rows = saved[0], saved[1:]
        return _write(args, rows, meta | {"refit_from": args.from_rows})
    if args.index:
        index_dir = args.index
        with open(args.data, encoding="utf-8") as f:
            recs = [json.loads(line) for line in f if line.strip()]
        items = [calibrate.DevItem(r["question"], r["answer"]) for r in recs[:args.limit]]
        dev = f"{args.data}: first {len(items)} records"
    else:
        index_dir, held = gsm8k.build_index(args.data, args.dev_fold, args.folds, progress=True)
        items = [calibrate.DevItem(e.question, e.rationale) for e in held[:args.limit]]
        dev = (f"{args.data}: fold {args.dev_fold} of {args.folds} (line i with i % {args.folds} == {args.dev_fold}), "
               f"held-out items [0, {len(items)}); index: worked examples of the other folds")
    lm = load_engine(args.model, backend="torch", threads=args.threads, packed=False)  # the gate needs gradients
    retriever = AdaCompRetriever(index_dir, gate_model=lm, thresholds={}, budget_tokens=args.budget_tokens)
    follow_up = None if args.no_multi else lm_follow_up(lm.model, lm.tokenizer, max_new_tokens=args.follow_up_tokens)
    meta = {"command": "hola-ros " + " ".join(sys.argv[1:]), "model": lm.name,
            "embedder": retriever.embedder.name, "index": str(index_dir), "dev": dev,
            "budget_tokens": args.budget_tokens, "multi_step": follow_up is not None}
    done, sink = {}, None
    if args.rows:
        # resume: questions already measured with the same setup are not measured again
        if os.path.isfile(args.rows):
            with open(args.rows, encoding="utf-8") as f:
                saved = [json.loads(line) for line in f if line.strip()]
            if saved and all(saved[0].get(k) == meta[k] for k in ("model", "embedder", "budget_tokens", "multi_step")):
                done = {r["question"]: r for r in saved[1:]}
        sink = open(args.rows, "w", encoding="utf-8")
        sink.write(json.dumps(meta) + "\n")
        for r in done.values():
            sink.write(json.dumps(r) + "\n")
        sink.flush()

    def keep(row):
        if sink is not None:
            sink.write(json.dumps(row) + "\n")
            sink.flush()

    todo = [it for it in items if it.question not in done]
    print(f"{len(items) - len(todo)} of {len(items)} questions already measured in {args.rows}", file=sys.stderr)
    new_rows = calibrate.measure(retriever, lm.model, lm.tokenizer, todo, follow_up=follow_up, progress=True,
                                 on_row=keep)
    if sink is not None:
        sink.close()
    by_q = {**done, **{r["question"]: r for r in new_rows}}
    rows = [by_q[it.question] for it in items]
    meta["measure_seconds_this_run"] = round(time.perf_counter() - t0, 1)
    return _write(args, rows, meta)


def _write(args, rows, meta) -> int:
    import json

    from hola_ros.core.retrieval import calibrate
    from hola_ros.core.retrieval.gate import merge_thresholds

    thresholds, report = calibrate.fit(rows, margin=args.margin)
    thresholds = {k: v for k, v in merge_thresholds(thresholds).items() if k != "file"}
    calibrate.write_yaml(args.out, thresholds, calibrate.provenance(**meta, report=report))
    print(json.dumps({"thresholds": thresholds, "report": report}, indent=1))
    print(f"wrote {args.out}")
    return 0


def _calibrate_kb(args) -> int:
    """Both gates on the KB question set's --split (docs/retrieval.md, "Calibrating the gate")."""
    import json
    import sys

    from hola_ros.core.evaluation import kb, kb_gate
    from hola_ros.core.retrieval import calibrate
    from hola_ros.core.retrieval.adacomp import default_index_dir
    from hola_ros.core.retrieval.gate import ComplexityGate, merge_thresholds

    try:
        items = kb.load_items(args.kb, args.split)[:args.limit]
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    index_dir = args.index or default_index_dir()
    gate = None
    if args.model not in ("", "none"):
        from hola_ros.core.engines import load_engine

        lm = load_engine(args.model, backend="torch", threads=args.threads, packed=False)  # the gate needs gradients
        gate = ComplexityGate(lm.model, lm.tokenizer, {})
    rows = kb_gate.measure(items, index_dir, gate=gate, budget_tokens=args.budget_tokens)
    evidence, evidence_report = kb_gate.fit_evidence(rows)
    thresholds, report = evidence, {"evidence_gate": evidence_report}
    if gate is not None:
        gradient, report["gradient_gate"] = kb_gate.fit_gradient(rows, evidence["specific_share"])
        thresholds = gradient | evidence
    thresholds = {k: v for k, v in merge_thresholds(thresholds | {"calibrated": True}).items() if k != "file"}
    meta = calibrate.provenance(
        command="hola-ros " + " ".join(sys.argv[1:]), data=f"{args.kb}: split {args.split}, {len(items)} questions",
        index=str(index_dir), budget_tokens=args.budget_tokens, gradient_gate_model=args.model if gate else None,
        objective="mean utility of the chosen level minus 0.02 per retrieval step (core/evaluation/kb_gate.py); "
                  "the gradient gate report's 'nll' columns are minus that utility", report=report)
    calibrate.write_yaml(args.out, thresholds, meta)
    if args.rows:
        with open(args.rows, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print(json.dumps({"thresholds": thresholds, "report": report}, indent=1))
    print(f"wrote {args.out}")
    return 0
