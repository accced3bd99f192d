"""`hola-ros bench-constraint`: the cost of constrained decoding (core/evaluation/constraint_speed.py):
mask time per token of llguidance (and xgrammar, where importable) on the served model's
vocabulary, and constrained vs unconstrained AR / HSD decode speed on command requests."""


def register(subparsers) -> None:
    p = subparsers.add_parser("bench-constraint", help="constrained decoding: mask time per token, decode speed",
                              description="Mask time per token of the grammar libraries on the model's vocabulary "
                                          "(the demo site's tool calls and a JSON object with free text), and greedy "
                                          "AR / HSD decode speed with and without the tool grammar on command "
                                          "requests of the dev set. Timings need a quiet machine.")
    p.add_argument("--model", default=None, help="target (default: the served default)")
    p.add_argument("--data", default=None, help="command dev set (default: the packaged data/kb_eval/commands.jsonl)")
    p.add_argument("--requests", type=int, default=8, help="command requests decoded per configuration")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--xgrammar-path", default=None, help="a folder xgrammar is installed in (pip --target), to "
                                                         "time it beside llguidance")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-decode", action="store_true", help="mask times only")
    p.set_defaults(run=run)


def run(args) -> int:
    import json
    import os
    import resource

    from hola_ros.core.engines import load_engine
    from hola_ros.core.evaluation import commands, constraint_speed as cs
    from hola_ros.core.tools import parse_tools, tool_grammar
    from hola_ros.package_data import require_package_file

    model = load_engine(args.model, threads=args.threads)
    tools = parse_tools(require_package_file("data/kb_eval/robot_tools.json").read_text())
    report = {"model": model.name, "vocab_size": model.vocab_size, "cpus": os.cpu_count(),
              "load_average": os.getloadavg(), "masks": {}}
    for case, schema, texts in (("tool_call", cs.calls_schema(tools), cs.CALLS), ("free_text_field", cs.NOTE_SCHEMA, [cs.NOTE])):
        report["masks"][case] = {"llguidance": cs.llguidance_masks(model, schema, texts),
                                 "xgrammar": cs.xgrammar_masks(model, schema, texts, args.xgrammar_path)}
    if not args.skip_decode:
        items = commands.load_items(args.data or require_package_file("data/kb_eval/commands.jsonl"), "tune")
        prompts = [model.chat_ids([{"role": "user", "content": it.request}], [t.as_template() for t in tools])
                   for it in items[:args.requests]]
        single = model.tokenizer.convert_tokens_to_ids("<tool_call>") is not None
        report["decode"] = cs.decode_speeds(model, prompts, tool_grammar(tools, "required", single), args.max_new_tokens)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(report, indent=1))
    return 0
