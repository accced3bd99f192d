"""`hola-ros eval commands`: tool-call validity and intended-call accuracy on the command dev set
(core/evaluation/commands.py), constrained beside unconstrained."""
from types import SimpleNamespace

from hola_ros.package_data import package_file

TOOLS_FILE = "data/kb_eval/robot_tools.json"


def add_arguments(p) -> None:
    g = p.add_argument_group("commands (hola-ros eval commands --data data/kb_eval/commands.jsonl)")
    g.add_argument("--tools", default=None, help=f"commands: JSON list of the robot's tools (default: the packaged {TOOLS_FILE})")


def run_commands(args) -> int:
    import json
    import sys
    from pathlib import Path

    from hola_ros.cli._eval_kb import profile_settings
    from hola_ros.core.evaluation import commands, kb
    from hola_ros.core.evaluation.runner import ResultsFile, check_run
    from hola_ros.core.kvcache import PromptCache

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    try:
        configs = tuple(c.strip() for c in (args.configs or ",".join(commands.COMMAND_CONFIGS)).split(",") if c.strip())
        unknown = [c for c in configs if c not in commands.COMMAND_CONFIGS]
        if unknown:
            raise ValueError(f"unknown configurations {unknown}: choose from {', '.join(commands.COMMAND_CONFIGS)}")
        profile = profile_settings(args.profile) if args.profile else {}
        l1 = profile.get("l1") if args.l1 in (None, "int8") else args.l1
        model = args.model or profile.get("model")
        tools_json = Path(args.tools or package_file(TOOLS_FILE) or TOOLS_FILE).read_text(encoding="utf-8")
        items = commands.load_items(args.data, args.split)[:args.limit]
        max_new = args.max_new_tokens or 64
        out = Path(args.out or "results/eval/commands")
        key = {"data": str(args.data), "tools": json.loads(tools_json), "model": model or "default", "l1": l1,
               "max_new_tokens": max_new, "lobi": None}
        check_run(out, SimpleNamespace(run_key=lambda: key))
    except (ValueError, FileNotFoundError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = kb.KBSettings(data=args.data, configs=("auto",), model=model,
                             l1=None if l1 in (None, "", "none", "int8") else l1, threads=args.threads)
    resources = kb.KBResources(settings)
    results = ResultsFile(out / "results.jsonl")
    done = results.done()
    cache = PromptCache(resources.target(), 4, 2048)  # the verifier's defaults
    for config in configs:
        todo = [it for it in items if (config, it.id) not in done]
        for k, item in enumerate(todo, 1):
            row = commands.run_item(config, item, tools_json, resources.target(), resources.drafter(),
                                    resources.retrieve("auto"), max_new, cache)
            results.append(row)
            log(f"{config} [{k}/{len(todo)}] {item.id} {'OK' if row['intended'] else '--'} "
                f"{'valid' if row['valid'] else 'INVALID'} {row['calls'] or row['text'][:60]!r} {row['latency_s']}s")
    summary = commands.summarize(results.rows(), items, configs)
    report = {"settings": {"data": str(args.data), "split": args.split, "model": model or "default", "l1": l1,
                           "max_new_tokens": max_new}, "n": len(items), "configs": summary}
    (out / "summary.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(summary if args.json else report, indent=None if args.json else 1))
    return 0
