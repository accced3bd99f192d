"""Speed benchmark, like with like: every system decodes the same prompt tokens greedily to the
same number of new tokens (EOS suppressed), each system in its own process (so its peak RSS is
its own), one after another in one run. The peer is llama.cpp's plain decoding on the same GGUF.

Per system: tokens/s per prompt, tokens per CPU-second, peak RSS, HSD acceptance and tokens per
target pass, identity with this engine's plain decoding, agreement with llama.cpp's tokens
(first divergence, and teacher-forced top-1 agreement along llama.cpp's continuation), and
optionally the verify-cost curve: time of a B-row step / one-row step after a 120-token prompt.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SYSTEMS = ("llamacpp", "ar", "hsd_l0", "hsd_l1", "hsd_l0_l1", "hf_generate")
CURVE_ROWS = (1, 2, 3, 4, 6, 8, 12, 16)
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


def prompt_sets(tokenizer, kb_dir: Path, gsm8k: Path, n_passage: int, n_gsm8k: int) -> dict[str, list[list[int]]]:
    """Passage-grounded questions over the demo knowledge base, and held-out GSM8K questions
    (the tail of the train split, far from what calibration reads)."""
    from hola_ros.core.models import chat_ids

    sets = {"passage": [], "gsm8k": []}
    for name, question in PASSAGE_QUESTIONS[:n_passage]:
        sets["passage"].append(chat_ids(tokenizer, [
            {"role": "system", "content": "Answer the question using only the passage. Quote it where you can."},
            {"role": "user", "content": f"Passage:\n{(kb_dir / name).read_text()}\n\nQuestion: {question}"}]))
    lines = gsm8k.read_text(encoding="utf-8").splitlines()
    for line in lines[len(lines) - n_gsm8k:] if n_gsm8k else []:
        question = json.loads(line)["question"]
        sets["gsm8k"].append(chat_ids(tokenizer, [{"role": "user", "content": question + " Think step by step."}]))
    return sets


# -- one system, in a child process ------------------------------------------------------------
def _runner(system: str, spec: str, l1: str | None, threads: int):
    """(decode(prompt, n) -> (tokens, stats), curve(prompt) -> {B: seconds}, model) for a system."""
    if system == "llamacpp":
        from hola_ros.core.engines import gguf_file
        from hola_ros.core.llamacpp_peer import LlamaCpp

        peer = LlamaCpp(str(gguf_file(spec)), threads=threads)
        return (lambda ids, n: (peer.greedy(ids, n), {})), lambda ids: _curve_llamacpp(peer, ids), peer
    if system == "hf_generate":
        return _hf_runner(spec, threads)
    from hola_ros.core.drafters import LocalDrafter
    from hola_ros.core.engines import load_engine, load_l1
    from hola_ros.core.hsd import GenerationConfig, generate

    target = load_engine(spec, threads=threads)
    l1_model = load_l1(l1, spec, threads=threads) if system in ("hsd_l1", "hsd_l0_l1") else None
    if system in ("hsd_l1", "hsd_l0_l1") and l1_model is None:
        raise ValueError(f"{system} needs --l1")

    def decode(ids, n):
        drafter = None if system == "ar" else LocalDrafter(ngram=system != "hsd_l1", model=l1_model)
        res = generate(target, ids, GenerationConfig(mode="ar" if system == "ar" else "hsd", max_new_tokens=n,
                                                     ignore_eos=True), drafter=drafter)
        return res.token_ids, res.stats

    return decode, lambda ids: _curve_engine(target, ids), target


def _hf_runner(spec: str, threads: int):
    import torch

    from hola_ros.core.engines import load_engine

    stock = load_engine(spec, backend="torch", packed=False, threads=threads)

    def decode(ids, n):
        x = torch.tensor([ids])
        with torch.inference_mode():
            out = stock.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                                       min_new_tokens=n, pad_token_id=stock.tokenizer.eos_token_id)
        return out[0, len(ids):].tolist(), {}

    return decode, None, stock


def _median_time(fn, reps: int = 7) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def _curve_engine(model, prompt: list[int]) -> dict[int, float]:
    session = model.new_session()
    session.forward(prompt[:-1], last_only=True)
    start = session.length

    def step(rows):
        session.rollback(start)
        session.forward(prompt[-rows:])

    return {b: _median_time(lambda b=b: step(b)) for b in CURVE_ROWS}


def _curve_llamacpp(peer, prompt: list[int]) -> dict[int, float]:
    peer.truncate(0)
    peer.decode(prompt[:-16], 0)
    start = len(prompt) - 16

    def step(rows):
        peer.truncate(start)
        peer.decode(prompt[start:start + rows], start, all_logits=True)

    return {b: _median_time(lambda b=b: step(b)) for b in CURVE_ROWS}


def _teacher_forced(model, prompt: list[int], reference: list[int]) -> float:
    """Share of positions where the engine's argmax is llama.cpp's token, fed llama.cpp's tokens."""
    if not reference:
        return float("nan")
    session = model.new_session()
    session.forward(prompt[:-1], last_only=True)
    rows = session.forward([prompt[-1]] + reference[:-1])
    session.close()
    return float((rows.argmax(-1) == reference).mean())


def measure(args: dict) -> dict:
    """Run one system over every prompt (this is the child process's work)."""
    t0 = time.perf_counter()
    decode, curve, model = _runner(args["system"], args["spec"], args.get("l1"), args["threads"])
    load_s = time.perf_counter() - t0
    sets, n = args["prompts"], args["max_new_tokens"]
    first = next(p for prompts in sets.values() for p in prompts)
    decode(first[:32], 8)  # warm-up: one-off allocations and kernel selection
    runs = []
    for set_name, prompts in sets.items():
        for i, ids in enumerate(prompts):
            cpu0, t0 = time.process_time(), time.perf_counter()
            tokens, stats = decode(ids, n)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            run = {"set": set_name, "prompt": i, "prompt_tokens": len(ids), "new_tokens": len(tokens),
                   "seconds": wall, "cpu_s": cpu, "tokens": tokens,
                   **{k: stats.get(k) for k in ("acceptance_rate", "mean_accepted_block", "target_forwards", "exact")}}
            reference = (args.get("reference") or {}).get(set_name)
            if reference and args["system"] == "ar":
                run["teacher_forced_agreement"] = _teacher_forced(model, ids, reference[i])
            runs.append(run)
            print(f"{args['system']:10s} {set_name}[{i}] {len(tokens) / wall:7.2f} tok/s", file=sys.stderr, flush=True)
    result = {"system": args["system"], "load_s": load_s, "runs": runs,
              "row_invariant": getattr(model, "info", {}).get("row_invariant"),
              "backend": getattr(model, "info", {}).get("backend", args["system"])}
    if args.get("curve") and curve is not None:
        result["curve_s"] = curve(first[:120] if len(first) >= 120 else first)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


# -- the run, in the parent process --------------------------------------------------------------
def spawn(args: dict, log=print) -> dict:
    """One system in a child process; a crash (e.g. SIGILL inside a native library) is reported."""
    package_root = str(Path(__file__).resolve().parents[3])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    log(f"bench: {args['system']} ...")
    proc = subprocess.run([sys.executable, "-m", "hola_ros.core.evaluation.speed", json.dumps(args)], env=env,
                          capture_output=True, text=True)
    for line in proc.stderr.splitlines():
        if "tok/s" in line:
            log(line)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        last = proc.stderr.strip().splitlines()[-1:] if proc.returncode > 0 else []
        return {"system": args["system"], "error": f"the {args['system']} process failed ({how})"
                                                   + (f": {last[0][-300:]}" if last else "")}
    return json.loads(lines[-1])


def run(spec: str, prompts: dict, systems: list[str], max_new_tokens: int, threads: int, l1: str | None = None,
        curve: bool = True, log=print) -> dict:
    """Every system on the same prompts; llama.cpp first, so its tokens are the reference."""
    results = {}
    common = dict(spec=spec, l1=l1, prompts=prompts, max_new_tokens=max_new_tokens, threads=threads, curve=curve)
    order = sorted(systems, key=lambda s: (s != "llamacpp", s != "ar"))
    reference = None
    for system in order:
        # one curve per engine: llama.cpp's, and this engine's (every ar/hsd system runs the same one)
        results[system] = spawn(dict(common, system=system, reference=reference,
                                     curve=curve and system in ("llamacpp", "ar")), log)
        if system == "llamacpp" and "runs" in results[system]:
            reference = {s: [r["tokens"] for r in results[system]["runs"] if r["set"] == s] for s in prompts}
    return {"spec": spec, "l1": l1, "max_new_tokens": max_new_tokens, "threads": threads,
            "cpus": os.cpu_count(), "load_avg_end": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "results": results, "summary": summarize(results, list(prompts))}


def _first_divergence(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def summarize(results: dict, sets: list[str]) -> dict:
    ok = {s: r for s, r in results.items() if "runs" in r}
    summary = {}
    for set_name in sets:
        runs = {s: [x for x in r["runs"] if x["set"] == set_name] for s, r in ok.items()}
        tps = {s: statistics.median(x["new_tokens"] / x["seconds"] for x in rs) for s, rs in runs.items() if rs}
        for system, rs in runs.items():
            if not rs:
                continue
            row = {"median_tokens_per_s": tps[system],
                   "tokens_per_cpu_s": statistics.median(x["new_tokens"] / x["cpu_s"] for x in rs if x["cpu_s"] > 0),
                   "new_tokens": sum(x["new_tokens"] for x in rs),
                   "x_llamacpp": tps[system] / tps["llamacpp"] if "llamacpp" in tps else None,
                   "x_ar": tps[system] / tps["ar"] if "ar" in tps else None,
                   "peak_rss_mb": ok[system]["peak_rss_mb"]}
            acc = [x["acceptance_rate"] for x in rs if x.get("acceptance_rate") is not None]
            blk = [x["mean_accepted_block"] for x in rs if x.get("mean_accepted_block") is not None]
            row["acceptance"] = statistics.mean(acc) if acc and system.startswith("hsd") else None
            row["tokens_per_pass"] = statistics.mean(blk) if blk and system.startswith("hsd") else None
            if "ar" in runs and system.startswith("hsd"):
                row["same_as_ar"] = all(x["tokens"] == y["tokens"] for x, y in zip(rs, runs["ar"]))
            if "llamacpp" in runs and system != "llamacpp":
                row["first_divergence_vs_llamacpp"] = statistics.mean(
                    _first_divergence(x["tokens"], y["tokens"]) for x, y in zip(rs, runs["llamacpp"]))
            tf = [x["teacher_forced_agreement"] for x in rs if "teacher_forced_agreement" in x]
            if tf:
                row["teacher_forced_agreement"] = statistics.mean(tf)
            summary.setdefault(set_name, {})[system] = row
    return summary


def _f(v, fmt=".2f", none="") -> str:
    return none if v is None else format(v, fmt)


def markdown(report: dict) -> str:
    results, summary = report["results"], report["summary"]
    lines = [f"`{report['spec']}`" + (f", L1 `{report['l1']}`" if report["l1"] else "") +
             f": greedy, {report['max_new_tokens']} new tokens (EOS suppressed), {report['threads']} threads, "
             f"each system in its own process; median tokens/s over the prompts of a set; load average at the "
             f"end {', '.join(f'{x:.1f}' for x in report['load_avg_end'])} ({report['time']}).", "",
             "| set | system | tok/s | x llama.cpp | x AR | tok/CPU-s | accept | tok/pass | =AR | peak RSS MB |"
             " first divergence vs llama.cpp | teacher-forced agreement |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for set_name, systems in summary.items():
        for system, r in systems.items():
            same = r.get("same_as_ar")
            lines.append(f"| {set_name} | {system} | {r['median_tokens_per_s']:.2f} | {_f(r['x_llamacpp'])} | "
                         f"{_f(r['x_ar'])} | {r['tokens_per_cpu_s']:.2f} | {_f(r['acceptance'])} | "
                         f"{_f(r['tokens_per_pass'])} | {'' if same is None else ('yes' if same else 'NO')} | "
                         f"{r['peak_rss_mb']:.0f} | {_f(r.get('first_divergence_vs_llamacpp'), '.1f')} | "
                         f"{_f(r.get('teacher_forced_agreement'), '.3f')} |")
    errors = [f"- {s}: {r['error']}" for s, r in results.items() if "error" in r]
    curves = {s: r["curve_s"] for s, r in results.items() if r.get("curve_s")}
    if curves:
        rows = sorted({int(b) for c in curves.values() for b in c})
        lines += ["", "Verify cost: time of one B-row step / one-row step, after a 120-token prompt "
                      "(one-row step in ms in the first column)", "",
                  "| engine | 1 row ms | " + " | ".join(f"B={b}" for b in rows) + " |",
                  "|---|---|" + "---|" * len(rows)]
        for system, c in curves.items():
            one = c.get("1", c.get(1))
            lines.append(f"| {system} | {one * 1e3:.1f} | " +
                         " | ".join(f"{c.get(str(b), c.get(b)) / one:.2f}" for b in rows) + " |")
    return "\n".join(lines + ([""] + errors if errors else [])) + "\n"


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
