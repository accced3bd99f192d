"""Speed benchmark, like with like: every system decodes the same prompt tokens greedily (at most
the same number of new tokens, stopping at end of sequence unless EOS is masked), each system in its
own process (so its peak RSS is its own), one after another in one run. The peer is llama.cpp's
plain decoding on the same GGUF.

Three prompt sets: `passage` (one demo knowledge-base document and a question, 300-500 tokens),
`grounded` (the graph's own grounded prompt: its system rules and the passages retrieval gives a
held-out knowledge-base question with a large budget, ~800 tokens) and `gsm8k` (held-out GSM8K-train
questions, short prompts, long answers). With the prefix cache on (the default), every system keeps
the KV of what a prompt shares with the one before (the grounded set's system turn): this engine
through kvcache.PromptCache, llama.cpp by keeping its cache up to the common prefix.

Per system and prompt: time to first token (TTFT), decode tokens/s (tokens after the first over the
time after it), end-to-end tokens/s, tokens per CPU-second, peak RSS, HSD acceptance, tokens per
target pass and each level's proposed / accepted tokens and time, identity with this engine's plain
decoding, agreement with llama.cpp's tokens (first divergence, teacher-forced top-1 agreement along
llama.cpp's continuation), and optionally the verify-cost curve: time of a B-row step / one-row step
after a 120-token prompt.
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

ENGINE_SYSTEMS = ("ar", "hsd_l0", "hsd_l1", "hsd_l0_l1")
# lobi_*: the same decoding on a Lo-Bi engine of the GGUF (`lobi`), beside the GGUF's own engine and llama.cpp
SYSTEMS = ("llamacpp", *ENGINE_SYSTEMS, "hf_generate", *(f"lobi_{s}" for s in ENGINE_SYSTEMS))
SETS = ("passage", "grounded", "gsm8k")
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
GROUNDED_BUDGET = 720  # context tokens of the grounded set's passages: ~800-token prompts with the rules


def prompt_sets(tokenizer, kb_dir: Path, gsm8k: Path, n_passage: int, n_gsm8k: int, n_grounded: int = 0,
                kb_questions: Path | None = None) -> dict[str, list[list[int]]]:
    """The three prompt sets as token ids (see the module doc); GSM8K questions come from the tail
    of the train split, far from what calibration reads."""
    from hola_ros.core.models import chat_ids

    sets = {"passage": [], "grounded": [], "gsm8k": []}
    for name, question in PASSAGE_QUESTIONS[:n_passage]:
        sets["passage"].append(chat_ids(tokenizer, [
            {"role": "system", "content": "Answer the question using only the passage. Quote it where you can."},
            {"role": "user", "content": f"Passage:\n{(kb_dir / name).read_text()}\n\nQuestion: {question}"}]))
    if n_grounded:
        sets["grounded"] = [chat_ids(tokenizer, m) for m in grounded_messages(kb_questions, n_grounded)]
    sets["gsm8k"] = gsm8k_prompts(tokenizer, gsm8k, n_gsm8k)
    return {name: prompts for name, prompts in sets.items() if prompts}


def gsm8k_prompts(tokenizer, gsm8k: Path, n: int, skip_last: int = 0) -> list[list[int]]:
    """The n GSM8K-train questions before the file's last `skip_last` ones, as chat prompts: the gsm8k
    set (skip_last 0), or the warm-up answers just before it (skip_last = the set's size)."""
    from hola_ros.core.models import chat_ids

    lines = gsm8k.read_text(encoding="utf-8").splitlines()
    end = len(lines) - skip_last
    return [chat_ids(tokenizer, [{"role": "user", "content": json.loads(line)["question"] + " Think step by step."}])
            for line in lines[max(end - n, 0):end]] if n > 0 else []


def grounded_messages(kb_questions: Path, n: int) -> list[list[dict]]:
    """The graph's grounded chat for the first n answerable held-out questions of the knowledge-base
    dev set: retrieval over the demo knowledge base (single shot, GROUNDED_BUDGET tokens)."""
    from hola_ros.core.retrieval.adacomp import AdaCompRetriever, default_index_dir
    from hola_ros.core.retrieval.prompting import compose_messages

    rows = [json.loads(line) for line in kb_questions.read_text(encoding="utf-8").splitlines() if line.strip()]
    questions = [r["question"] for r in rows if r.get("split") == "heldout" and r["kind"] in ("single", "multi")][:n]
    retriever = AdaCompRetriever(default_index_dir(), budget_tokens=GROUNDED_BUDGET, top_k=8, thresholds={})
    return [compose_messages(q, retriever.retrieve(q, "single").passages) for q in questions]


# -- one system, in a child process ------------------------------------------------------------
def _runner(args: dict):
    """(decode(prompt, n) -> (tokens, stats), curve(prompt) -> {B: seconds}, model, drafter) for a system:
    an HSD system keeps one drafter for all its prompts, as the drafter node does (its level 0 keeps
    the answers it committed, AnswerHistory)."""
    system, spec, threads = args["system"], args["spec"], args["threads"]
    ignore_eos, reuse = args.get("ignore_eos", False), args.get("prefix_cache", True)
    if system == "llamacpp":
        from hola_ros.core.engines import gguf_file
        from hola_ros.core.llamacpp_peer import LlamaCpp

        peer = LlamaCpp(str(gguf_file(spec)), threads=threads)
        decode = lambda ids, n: peer.greedy(ids, n, ignore_eos=ignore_eos, reuse_prefix=reuse)  # noqa: E731
        return decode, lambda ids: _curve_llamacpp(peer, ids), peer, None
    if system == "hf_generate":
        return (*_hf_runner(spec, threads, ignore_eos), None)
    from hola_ros.core.drafters import LocalDrafter
    from hola_ros.core.engines import load_engine, load_l1
    from hola_ros.core.hsd import GenerationConfig, generate
    from hola_ros.core.kvcache import PromptCache

    lobi, mode = system.startswith("lobi_"), system.removeprefix("lobi_")
    if lobi and not args.get("lobi"):
        raise ValueError(f"{system} needs --lobi")
    target = load_engine(args["lobi"] if lobi else spec, threads=threads)
    l1_model = load_l1(args.get("l1"), spec, threads=threads) if mode in ("hsd_l1", "hsd_l0_l1") else None
    if mode in ("hsd_l1", "hsd_l0_l1") and l1_model is None:
        raise ValueError(f"{system} needs --l1")
    cache = PromptCache(target) if reuse else None

    drafter = None if mode == "ar" else LocalDrafter(ngram=mode != "hsd_l1", model=l1_model)

    def decode(ids, n):
        res = generate(target, ids, GenerationConfig(mode="ar" if mode == "ar" else "hsd", max_new_tokens=n,
                                                     ignore_eos=ignore_eos), drafter=drafter, cache=cache)
        return res.token_ids, res.stats

    return decode, lambda ids: _curve_engine(target, ids), target, drafter


def _hf_runner(spec: str, threads: int, ignore_eos: bool):
    import torch

    from hola_ros.core.engines import load_engine

    stock = load_engine(spec, backend="torch", packed=False, threads=threads)

    def decode(ids, n):
        x = torch.tensor([ids])
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = stock.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                                       min_new_tokens=n if ignore_eos else 0,
                                       pad_token_id=stock.tokenizer.eos_token_id)
        tokens = [t for t in out[0, len(ids):].tolist() if t not in stock.eos_token_ids]
        return tokens, {"total_s": time.perf_counter() - t0}

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


RUN_STATS = ("acceptance_rate", "mean_accepted_block", "target_forwards", "exact", "reused_prompt_tokens",
             "proposed_per_level", "accepted_per_level", "level_s", "draft_s", "verify_s")


def _timed_run(decode, set_name: str, i: int, ids: list[int], n: int) -> dict:
    cpu0, t0 = time.process_time(), time.perf_counter()
    tokens, stats = decode(ids, n)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    first = min(stats.get("first_token_s", wall), wall)
    return {"set": set_name, "prompt": i, "prompt_tokens": len(ids), "new_tokens": len(tokens), "seconds": wall,
            "ttft_s": first, "decode_tokens_per_s": (len(tokens) - 1) / (wall - first) if len(tokens) > 1 else None,
            "cpu_s": cpu, "tokens": tokens, **{k: stats.get(k) for k in RUN_STATS if k in stats}}


def measure(args: dict) -> dict:
    """Run one system over every prompt (this is the child process's work)."""
    t0 = time.perf_counter()
    decode, curve, model, drafter = _runner(args)
    load_s = time.perf_counter() - t0
    sets, n = args["prompts"], args["max_new_tokens"]
    first = next(p for prompts in sets.values() for p in prompts)
    decode(first[:32], 8)  # warm-up: one-off allocations and kernel selection
    history = drafter.history if drafter is not None else None
    warm = (args.get("warm_prompts") or []) if history is not None else []
    if history is not None:
        history.clear()  # level 0 starts from no earlier answer but the warm-up set's, if any
    for ids in warm:
        decode(ids, n)
    runs = []
    for set_name, prompts in sets.items():
        for i, ids in enumerate(prompts):
            run = _timed_run(decode, set_name, i, ids, n)
            reference = (args.get("reference") or {}).get(set_name)
            if reference and args["system"] in ("ar", "lobi_ar"):
                run["teacher_forced_agreement"] = _teacher_forced(model, ids, reference[i])
            runs.append(run)
            print(f"{args['system']:10s} {set_name}[{i}] {run['new_tokens']} tokens, TTFT {run['ttft_s']:.2f} s, "
                  f"{run['new_tokens'] / run['seconds']:7.2f} tok/s", file=sys.stderr, flush=True)
    info = getattr(model, "info", {})
    result = {"system": args["system"], "load_s": load_s, "warm_answers": len(warm), "runs": runs, "row_invariant": info.get("row_invariant"),
              "backend": info.get("backend", args["system"]), "weights_bytes": info.get("weights_bytes")}
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
        curve: bool = True, log=print, ignore_eos: bool = False, prefix_cache: bool = True,
        lobi: str | None = None, warm_prompts: list[list[int]] | None = None) -> dict:
    """Every system on the same prompts; llama.cpp first, so its tokens are the reference.
    `warm_prompts`: answered (untimed) by each HSD system before the timed prompts, so its level 0
    holds their answers as a drafter node that has served them does."""
    results = {}
    common = dict(spec=spec, l1=l1, lobi=lobi, prompts=prompts, max_new_tokens=max_new_tokens, threads=threads,
                  curve=curve, ignore_eos=ignore_eos, prefix_cache=prefix_cache, warm_prompts=warm_prompts or [])
    order = sorted(systems, key=lambda s: (s != "llamacpp", s != "ar"))
    reference = None
    for system in order:
        # one curve per engine: llama.cpp's, and this engine's (every ar/hsd system runs the same one)
        results[system] = spawn(dict(common, system=system, reference=reference,
                                     curve=curve and system in ("llamacpp", "ar", "lobi_ar")), log)
        if system == "llamacpp" and "runs" in results[system]:
            reference = {s: [r["tokens"] for r in results[system]["runs"] if r["set"] == s] for s in prompts}
    return {"spec": spec, "l1": l1, "lobi": lobi, "max_new_tokens": max_new_tokens, "threads": threads, "ignore_eos": ignore_eos,
            "warm_answers": len(warm_prompts or []),
            "prefix_cache": prefix_cache, "cpus": os.cpu_count(), "cpu": _cpu_name(),
            "load_avg_end": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "prompt_tokens": {s: [len(p) for p in ps] for s, ps in prompts.items()},
            "results": results, "summary": summarize(results, list(prompts))}


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def _first_divergence(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def _levels(rs: list[dict]) -> dict:
    """Each drafting level's proposed and accepted tokens and its time, summed over the runs."""
    out = {}
    for lv in ("L0", "L1"):
        proposed = sum((x.get("proposed_per_level") or {}).get(lv, 0) for x in rs)
        accepted = sum((x.get("accepted_per_level") or {}).get(lv, 0) for x in rs)
        seconds = sum((x.get("level_s") or {}).get(lv, 0.0) for x in rs)
        if proposed:
            out[lv] = {"proposed": proposed, "accepted": accepted, "seconds": round(seconds, 3)}
    return out


def _row(rs: list[dict], system: str) -> dict:
    row = {"decode_tokens_per_s": _median(x["decode_tokens_per_s"] for x in rs),
           "ttft_s": _median(x["ttft_s"] for x in rs),
           "median_tokens_per_s": _median(x["new_tokens"] / x["seconds"] for x in rs),
           "tokens_per_cpu_s": _median(x["new_tokens"] / x["cpu_s"] for x in rs if x["cpu_s"] > 0),
           "new_tokens": sum(x["new_tokens"] for x in rs),
           "reused_prompt_tokens": sum(x.get("reused_prompt_tokens") or 0 for x in rs)}
    if "hsd" in system:
        row["acceptance"] = _median(x.get("acceptance_rate") for x in rs)
        row["tokens_per_pass"] = _median(x.get("mean_accepted_block") for x in rs)
        row["levels"] = _levels(rs)
    return row


def summarize(results: dict, sets: list[str]) -> dict:
    ok = {s: r for s, r in results.items() if "runs" in r}
    summary = {}
    for set_name in sets:
        runs = {s: [x for x in r["runs"] if x["set"] == set_name] for s, r in ok.items()}
        rows = {s: _row(rs, s) for s, rs in runs.items() if rs}
        peer = rows.get("llamacpp", {})
        for system, row in rows.items():
            row["peak_rss_mb"] = ok[system]["peak_rss_mb"]
            for key in ("decode_tokens_per_s", "median_tokens_per_s"):
                row[f"{key}_x_llamacpp"] = _ratio(row[key], peer.get(key))
                row[f"{key}_x_ar"] = _ratio(row[key], rows.get("ar", {}).get(key))
            row["ttft_x_llamacpp"] = _ratio(peer.get("ttft_s"), row["ttft_s"])  # > 1: faster first token
            plain = "lobi_ar" if system.startswith("lobi_") else "ar"  # greedy HSD against its own engine's AR
            if plain in runs and "hsd" in system:
                row["same_as_ar"] = all(x["tokens"] == y["tokens"] for x, y in zip(runs[system], runs[plain]))
            if "llamacpp" in runs and system != "llamacpp":
                row["first_divergence_vs_llamacpp"] = statistics.mean(
                    _first_divergence(x["tokens"], y["tokens"]) for x, y in zip(runs[system], runs["llamacpp"]))
            tf = [x["teacher_forced_agreement"] for x in runs[system] if "teacher_forced_agreement" in x]
            if tf:
                row["teacher_forced_agreement"] = statistics.mean(tf)
        summary[set_name] = rows
    return summary


def _f(v, fmt=".2f", none="") -> str:
    return none if v is None else format(v, fmt)


def _level_cell(row: dict) -> str:
    levels = row.get("levels") or {}
    return "; ".join(f"{lv} {d['accepted']}/{d['proposed']} in {d['seconds']:.1f} s" for lv, d in levels.items())


def markdown(report: dict) -> str:
    results, summary = report["results"], report["summary"]
    eos = "EOS masked" if report.get("ignore_eos") else "stopping at EOS"
    cache = "prefix cache on" if report.get("prefix_cache", True) else "no prefix cache"
    lines = [f"`{report['spec']}`" + (f", L1 `{report['l1']}`" if report["l1"] else "") +
             (f", Lo-Bi engine `{report['lobi']}`" if report.get("lobi") else "") +
             f": greedy, at most {report['max_new_tokens']} new tokens ({eos}), {report['threads']} threads, {cache}, "
             f"each system in its own process; medians over the prompts of a set; "
             f"level 0 warmed with {report.get('warm_answers', 0)} earlier answers; {report.get('cpu', '')}; load "
             f"average at the end {', '.join(f'{x:.1f}' for x in report['load_avg_end'])} ({report['time']}).", "",
             "| set | system | decode tok/s | x llama.cpp | x AR | TTFT s | TTFT x llama.cpp | e2e tok/s | "
             "x llama.cpp | new tokens | accept | tok/pass | levels: accepted/proposed, time | =AR | peak RSS MB |"
             " first divergence vs llama.cpp | teacher-forced agreement |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for set_name, systems in summary.items():
        for system, r in systems.items():
            same = r.get("same_as_ar")
            lines.append(
                f"| {set_name} | {system} | {_f(r['decode_tokens_per_s'])} | {_f(r['decode_tokens_per_s_x_llamacpp'])} | "
                f"{_f(r['decode_tokens_per_s_x_ar'])} | {_f(r['ttft_s'], '.3f')} | {_f(r['ttft_x_llamacpp'])} | "
                f"{_f(r['median_tokens_per_s'])} | {_f(r['median_tokens_per_s_x_llamacpp'])} | {r['new_tokens']} | "
                f"{_f(r.get('acceptance'))} | {_f(r.get('tokens_per_pass'))} | {_level_cell(r)} | "
                f"{'' if same is None else ('yes' if same else 'NO')} | {r['peak_rss_mb']:.0f} | "
                f"{_f(r.get('first_divergence_vs_llamacpp'), '.1f')} | {_f(r.get('teacher_forced_agreement'), '.3f')} |")
    errors = [f"- {s}: {r['error']}" for s, r in results.items() if "error" in r]
    return "\n".join(lines + _curve_lines(results) + ([""] + errors if errors else [])) + "\n"


def _curve_lines(results: dict) -> list[str]:
    curves = {s: r["curve_s"] for s, r in results.items() if r.get("curve_s")}
    if not curves:
        return []
    rows = sorted({int(b) for c in curves.values() for b in c})
    lines = ["", "Verify cost: time of one B-row step / one-row step, after a 120-token prompt "
                 "(one-row step in ms in the first column)", "",
             "| engine | 1 row ms | " + " | ".join(f"B={b}" for b in rows) + " |", "|---|---|" + "---|" * len(rows)]
    for system, c in curves.items():
        one = c.get("1", c.get(1))
        lines.append(f"| {system} | {one * 1e3:.1f} | " + " | ".join(f"{c.get(str(b), c.get(b)) / one:.2f}" for b in rows)
                     + " |")
    return lines


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
