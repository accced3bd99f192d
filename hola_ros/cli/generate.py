"""`hola-ros generate`: one in-process generation (AR or HSD) with streaming or JSON output."""
import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text in-process (AR or HSD)",
                              description="Generate one answer in this process. Without --json the text streams "
                                          "to stdout and a stats line goes to stderr.")
    p.add_argument("--prompt", required=True, help="user message (the chat template is applied unless --raw)")
    p.add_argument("--model", default=None, help="packaged model name (default: the served default), a .gguf "
                                                  "file, a Hugging Face directory or a Lo-Bi artifact")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "torch", "tensorrt"), default="auto",
                   help="auto: onnxruntime for GGUFs (quantized weights), torch for HF directories")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    p.add_argument("--mode", choices=("ar", "hsd"), default="hsd")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--raw", action="store_true", help="use the prompt text as is, no chat template")
    p.add_argument("--no-ngram", action="store_true", help="switch the L0 n-gram drafter off")
    p.add_argument("--l1-model", default=None, help="L1 drafter: model spec, Lo-Bi artifact dir, or 'int8' "
                                                    "(an int8 copy of the target)")
    p.add_argument("--draft-len", type=int, default=8, help="first draft length (adapts afterwards)")
    p.add_argument("--draft-len-max", type=int, default=16)
    p.add_argument("--entropy-gate", type=float, default=None, metavar="TAU",
                   help="the paper's entropy gate: keep draft tokens with entropy < TAU unchecked (LOSSY)")
    p.add_argument("--dtype", default="float32", help="torch backend: float32, bfloat16, float16 or int8")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object: text, token_ids, stop_reason, stats")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json
    import os
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hola_ros.core.drafters import LocalDrafter
    from hola_ros.core.engines import load_engine, load_l1
    from hola_ros.core.hsd import GenerationConfig, generate

    target = load_engine(args.model, backend=args.backend, dtype=args.dtype, threads=args.threads,
                         device=args.device)
    if args.raw:
        prompt_ids = target.encode(args.prompt)
    else:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}]
        prompt_ids = target.chat_ids(messages)
    drafter = None
    if args.mode == "hsd":
        l1 = load_l1(args.l1_model, args.model, threads=args.threads, device=args.device)
        if args.no_ngram and l1 is None:
            print("error: --no-ngram needs --l1-model (HSD needs at least one drafting level)", file=sys.stderr)
            return 2
        drafter = LocalDrafter(ngram=not args.no_ngram, model=l1)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                           top_k=args.top_k, seed=args.seed, stop=tuple(args.stop), mode=args.mode,
                           entropy_gate_tau=args.entropy_gate, draft_len=min(args.draft_len, args.draft_len_max),
                           draft_len_max=args.draft_len_max)

    def stream(_ids, text):
        sys.stdout.write(text)
        sys.stdout.flush()

    res = generate(target, prompt_ids, cfg, drafter=drafter, request_id="cli",
                   on_block=None if args.json else stream)
    res.stats["model"] = target.name
    if args.json:
        print(json.dumps(res.to_dict(), ensure_ascii=False))
    else:
        s = res.stats
        print(file=sys.stdout)
        print(f"[{s['mode']}] {s['new_tokens']} tokens in {s['total_s']:.2f} s ({s['tokens_per_s']:.1f} tok/s, "
              f"decode {s['decode_tokens_per_s']:.1f} tok/s), acceptance {s['acceptance_rate']:.2f}, "
              f"{s['target_forwards']} target passes, stop: {res.stop_reason}"
              + (f", flags: {', '.join(s['flags'])}" if s["flags"] else ""), file=sys.stderr)
    return 0
