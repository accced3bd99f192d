"""`hola-ros bench`: this engine's plain decoding and HSD against llama.cpp's plain decoding on the
same GGUF, greedy, same prompts and token counts, each system in its own process
(core/evaluation/speed.py)."""
import argparse

from hola_ros.core.evaluation.speed import SYSTEMS
from hola_ros.package_data import gsm8k_train, require_package_file

DEFAULT_SYSTEMS = ("llamacpp", "ar", "hsd_l0")


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="speed: llama.cpp vs this engine's AR and HSD, same GGUF",
                              description="Greedy decoding of the same prompts by every system, each in its own "
                                          "process; writes results.md and results.json to --out. llamacpp needs "
                                          "llama-cpp-python (make peers) and a GGUF model.")
    p.add_argument("--model", default=None, help="target: packaged name (default: the served default) or .gguf")
    p.add_argument("--l1", default=None, help="L1 drafter for hsd_l1 / hsd_l0_l1: a model spec, a Lo-Bi artifact "
                                              "or 'int8'; giving it adds those systems")
    p.add_argument("--lobi", default=None,
                   help="a Lo-Bi engine of the same GGUF (hola-ros lobi build); giving it adds lobi_ar, lobi_hsd_l0 "
                        "(and lobi_hsd_l0_l1 with --l1): the same decoding on it, beside the GGUF's engine")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--n-passage", type=int, default=4, help="passage-grounded prompts")
    p.add_argument("--n-gsm8k", type=int, default=4, help="GSM8K-train questions")
    p.add_argument("--n-grounded", type=int, default=4,
                   help="the graph's own grounded prompts (system rules + retrieved passages, ~800 tokens) for "
                        "held-out knowledge-base questions")
    p.add_argument("--kb-questions", default=None,
                   help="knowledge-base question set of the grounded prompts (default: the packaged one)")
    p.add_argument("--ignore-eos", action="store_true",
                   help="mask EOS so every system decodes exactly --max-new-tokens (default: stop at EOS)")
    p.add_argument("--no-prefix-cache", action="store_true",
                   help="prefill every prompt whole (default: each system keeps the KV of what a prompt shares "
                        "with the one before)")
    p.add_argument("--gsm8k", default=str(gsm8k_train()))
    p.add_argument("--kb", default=None, help="folder of passages (default: the packaged demo knowledge base)")
    p.add_argument("--warm-answers", type=int, default=0,
                   help="before the timed prompts, each HSD system answers this many GSM8K-train questions (the ones "
                        "before the gsm8k set's, untimed), so its level 0 holds earlier answers as a drafter node that "
                        "has served requests does (answer_history_tokens); 0: it starts with none")
    p.add_argument("--systems", default=None,
                   help=f"comma list from: {', '.join(SYSTEMS)} (default: {', '.join(DEFAULT_SYSTEMS)}, "
                        "plus hsd_l1,hsd_l0_l1 with --l1)")
    p.add_argument("--no-curve", action="store_true", help="skip the verify-cost curves")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="results folder (default: results/bench-<time>)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    import time
    from pathlib import Path

    from hola_ros.core.engines import load_tokenizer
    from hola_ros.core.evaluation import speed
    from hola_ros.core.model_store import DEFAULT_MODEL
    from hola_ros.core.retrieval.ingest import demo_kb_dir

    default = list(DEFAULT_SYSTEMS) + (["hsd_l1", "hsd_l0_l1"] if args.l1 else [])
    default += (["lobi_ar", "lobi_hsd_l0"] + (["lobi_hsd_l0_l1"] if args.l1 else [])) if args.lobi else []
    systems = [s for s in (args.systems.split(",") if args.systems else default) if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        print(f"error: unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}", file=sys.stderr)
        return 2
    if {"hsd_l1", "hsd_l0_l1", "lobi_hsd_l1", "lobi_hsd_l0_l1"} & set(systems) and not args.l1:
        print("error: hsd_l1 and hsd_l0_l1 need --l1", file=sys.stderr)
        return 2
    if any(s.startswith("lobi_") for s in systems) and not args.lobi:
        print("error: lobi_* systems need --lobi (a Lo-Bi engine directory)", file=sys.stderr)
        return 2
    spec = args.model or DEFAULT_MODEL
    questions = Path(args.kb_questions) if args.kb_questions else require_package_file("data/kb_eval/questions.jsonl")
    if args.warm_answers < 0:
        print("error: --warm-answers must be >= 0", file=sys.stderr)
        return 2
    tokenizer = load_tokenizer(spec)
    prompts = speed.prompt_sets(tokenizer, Path(args.kb) if args.kb else demo_kb_dir(), Path(args.gsm8k),
                                args.n_passage, args.n_gsm8k, args.n_grounded, questions)
    warm = speed.gsm8k_prompts(tokenizer, Path(args.gsm8k), args.warm_answers, skip_last=args.n_gsm8k)
    report = speed.run(spec, prompts, systems, args.max_new_tokens, args.threads, l1=args.l1,
                       curve=not args.no_curve, log=lambda m: print(m, file=sys.stderr, flush=True),
                       ignore_eos=args.ignore_eos, prefix_cache=not args.no_prefix_cache, lobi=args.lobi,
                       warm_prompts=warm)
    report["command"] = "hola-ros bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:])
    out = Path(args.out or f"results/bench-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    md = speed.markdown(report)
    (out / "results.md").write_text(md)
    print(md)
    print(f"wrote {out}/results.md and results.json", file=sys.stderr)
    return 0 if not any("error" in r for r in report["results"].values()) else 1
