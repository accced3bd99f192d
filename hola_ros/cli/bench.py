"""`hola-ros bench`: AR vs HSD (each level alone and combined) vs transformers' own assisted
generation and prompt-lookup decoding, greedy, same prompts, one run."""
import argparse

from hola_ros.package_data import gsm8k_train

PASSAGE_QUESTIONS = [
    ("01-facility-overview.md", "Which zones is the floor divided into, and what colour of tape marks each one?"),
    ("02-charging-docks.md", "Where are the charging docks and how do the robots use them?"),
    ("03-speed-limits.md", "What speed limits apply to the robots in the different areas?"),
    ("04-error-codes.md", "List the error codes and what the operator should do for each."),
    ("05-maintenance.md", "Summarise the maintenance schedule for the robots."),
    ("06-safety.md", "What safety rules must people and robots follow?"),
    ("07-battery.md", "Describe how the robot batteries are charged and when they must be replaced."),
    ("08-navigation.md", "How do the robots navigate the warehouse?"),
]
SYSTEMS = ("hf_generate", "hf_prompt_lookup", "hf_assisted", "ar", "hsd_l0", "hsd_l1", "hsd_l0_l1")


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmark AR vs HSD vs transformers built-ins",
                              description="Greedy decoding of the same prompts by every system; writes "
                                          "results.md and results.json to --out.")
    p.add_argument("--model", default=None, help="target model spec (default: the packaged SmolLM2)")
    p.add_argument("--l1", default="int8", help="L1 drafter: 'int8' (int8 copy of the target), a model "
                                                "spec or a Lo-Bi artifact; also the assistant of hf_assisted")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--n-passage", type=int, default=4, help="passage-grounded prompts")
    p.add_argument("--n-gsm8k", type=int, default=4, help="GSM8K-train questions")
    p.add_argument("--gsm8k", default=str(gsm8k_train()))
    p.add_argument("--kb", default=None, help="folder of passages (default: the packaged demo knowledge base)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma list from: " + ", ".join(SYSTEMS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="results folder (default: results/hsd-bench-<time>)")
    p.set_defaults(run=run)


def build_prompts(target, args):
    import json
    from pathlib import Path

    from hola_ros.core.retrieval.ingest import demo_kb_dir

    kb = Path(args.kb) if args.kb else demo_kb_dir()
    sets = {"passage": [], "gsm8k": []}
    for name, question in PASSAGE_QUESTIONS[:args.n_passage]:
        passage = (kb / name).read_text()
        sets["passage"].append(target.chat_ids([
            {"role": "system", "content": "Answer the question using only the passage. Quote it where you can."},
            {"role": "user", "content": f"Passage:\n{passage}\n\nQuestion: {question}"}]))
    with open(args.gsm8k) as f:
        for line in f:
            if len(sets["gsm8k"]) >= args.n_gsm8k:
                break
            q = json.loads(line)["question"]
            sets["gsm8k"].append(target.chat_ids([{"role": "user", "content": q + " Think step by step."}]))
    return sets


def run(args: argparse.Namespace) -> int:
    import json
    import os
    import platform
    import statistics
    import sys
    import time
    from pathlib import Path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from hola_ros.cli.generate import load_l1
    from hola_ros.core.drafters import LocalDrafter
    from hola_ros.core.hsd import GenerationConfig, generate
    from hola_ros.core.models import DEFAULT_MODEL, load_model

    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        print(f"error: unknown systems {sorted(unknown)}", file=sys.stderr)
        return 2
    spec = args.model or DEFAULT_MODEL
    target = load_model(spec, threads=args.threads)
    need_l1 = any(s in systems for s in ("hsd_l1", "hsd_l0_l1", "hf_assisted"))
    l1 = load_l1(args.l1, args.model, args.threads) if need_l1 else None
    stock = load_model(spec, packed=False, threads=args.threads) if any(s.startswith("hf_") for s in systems) else None
    sets = build_prompts(target, args)
    n = args.max_new_tokens
    out = Path(args.out or f"results/hsd-bench-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    progress = open(out / "runs.jsonl", "w")  # each run as it finishes (long runs on a shared machine)

    def ours(system, ids):
        drafter = {"ar": lambda: None, "hsd_l0": lambda: LocalDrafter(ngram=True),
                   "hsd_l1": lambda: LocalDrafter(ngram=False, model=l1),
                   "hsd_l0_l1": lambda: LocalDrafter(ngram=True, model=l1)}[system]()
        res = generate(target, ids, GenerationConfig(mode="ar" if system == "ar" else "hsd", max_new_tokens=n,
                                                     ignore_eos=True), drafter=drafter)
        return res.token_ids, res.stats

    def hf(system, ids):
        kw = {"prompt_lookup_num_tokens": 10} if system == "hf_prompt_lookup" else {}
        if system == "hf_assisted":
            kw["assistant_model"] = l1.model
        x = torch.tensor([ids])
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = stock.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                                       min_new_tokens=n, pad_token_id=stock.tokenizer.eos_token_id, **kw)
        dt = time.perf_counter() - t0
        new = out[0, len(ids):].tolist()
        return new, {"new_tokens": len(new), "total_s": dt, "tokens_per_s": len(new) / dt}

    # warm-up: first calls pay one-off allocation / kernel selection costs
    for system in systems:
        (hf if system.startswith("hf_") else ours)(system, sets["gsm8k"][0][:32] if sets["gsm8k"] else [1, 2])

    rows = []
    for set_name, prompts in sets.items():
        for i, ids in enumerate(prompts):
            ref = None
            for system in systems:
                cpu0 = time.process_time()
                toks, stats = (hf if system.startswith("hf_") else ours)(system, ids)
                cpu_s = time.process_time() - cpu0
                if system == "ar":
                    ref = toks
                rows.append({"set": set_name, "prompt": i, "system": system, "prompt_tokens": len(ids),
                             "new_tokens": stats["new_tokens"], "total_s": stats["total_s"],
                             "tokens_per_s": stats["tokens_per_s"], "cpu_s": cpu_s,
                             "tokens_per_cpu_s": stats["new_tokens"] / cpu_s if cpu_s > 0 else 0.0,
                             "acceptance_rate": stats.get("acceptance_rate"),
                             "mean_accepted_block": stats.get("mean_accepted_block"),
                             "target_forwards": stats.get("target_forwards"),
                             "same_as_ar": None if ref is None or system.startswith("hf_") else toks == ref})
                progress.write(json.dumps(rows[-1]) + "\n")
                progress.flush()
                print(f"{set_name}[{i}] {system:17s} {stats['tokens_per_s']:6.2f} tok/s"
                      + (f"  acc {stats['acceptance_rate']:.2f}" if "acceptance_rate" in stats else ""),
                      file=sys.stderr, flush=True)

    summary = {}
    for set_name in sets:
        for system in systems:
            sel = [r for r in rows if r["set"] == set_name and r["system"] == system]
            if not sel:
                continue
            acc = [r["acceptance_rate"] for r in sel if r["acceptance_rate"] is not None]
            summary.setdefault(set_name, {})[system] = {
                "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in sel),
                "median_tokens_per_cpu_s": statistics.median(r["tokens_per_cpu_s"] for r in sel),
                "mean_acceptance": statistics.mean(acc) if acc else None,
                "mean_accepted_block": statistics.mean(r["mean_accepted_block"] for r in sel)
                if sel[0]["mean_accepted_block"] is not None else None,
                "all_same_as_ar": all(r["same_as_ar"] for r in sel) if sel[0]["same_as_ar"] is not None else None,
            }
    meta = {"model": target.name, "l1": args.l1 if need_l1 else None, "max_new_tokens": n,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor() or
            platform.machine(), "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
            "row_invariant": target.info.get("row_invariant"), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": "hola-ros bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:])}
    progress.close()
    (out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows}, indent=1))
    md = markdown(meta, summary, systems)
    (out / "results.md").write_text(md)
    print(md)
    print(f"wrote {out}/results.md and results.json", file=sys.stderr)
    return 0


def markdown(meta, summary, systems) -> str:
    lines = [f"Model {meta['model']}, greedy, {meta['max_new_tokens']} new tokens, {meta['threads']} threads, "
             f"L1 = {meta['l1']}; median tokens/s end-to-end (prefill included) per prompt set, and tokens "
             f"per CPU-second of this process (less sensitive to other jobs on a shared machine); "
             f"load average at the end {', '.join(f'{x:.1f}' for x in meta['load_avg_at_end'])}.", ""]
    sets = list(summary)
    head = "| system | " + " | ".join(f"{s}: tok/s | x AR | x HF | tok/CPU-s | accept | tok/pass | =AR"
                                     for s in sets) + " |"
    lines += [head, "|" + "---|" * (1 + 7 * len(sets))]
    for system in systems:
        cells = [system]
        for s in sets:
            r = summary[s].get(system)
            ar = summary[s].get("ar", {}).get("median_tokens_per_s")
            hf = summary[s].get("hf_generate", {}).get("median_tokens_per_s")
            if r is None:
                cells += [""] * 7
                continue
            v = r["median_tokens_per_s"]
            cells += [f"{v:.2f}", f"{v / ar:.2f}" if ar else "", f"{v / hf:.2f}" if hf else "",
                      f"{r['median_tokens_per_cpu_s']:.2f}",
                      "" if r["mean_acceptance"] is None else f"{r['mean_acceptance']:.2f}",
                      "" if r["mean_accepted_block"] is None else f"{r['mean_accepted_block']:.2f}",
                      "" if r["all_same_as_ar"] is None else ("yes" if r["all_same_as_ar"] else "NO")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
