"""Benchmark of the issue: fp32 target vs Lo-Bi drafters vs an int8 copy of the target.

Every measurement runs in its own child process so peak RSS belongs to one configuration:
  solo   one model alone: weight bytes, peak RSS, per-token decode latency (median of
         one-token forwards after a GSM8K chat prompt)
  hsd    the fp32 target plus one drafter: greedy plain decoding (AR) and HSD with the drafter
         as the only drafting level (L1, no n-gram) on the same prompts in the same process,
         so the speed-up is paired under the same machine load; also checks the HSD output
         is identical to AR (lossless).
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

REPO = Path(__file__).resolve().parents[3]


def _prompts(n: int) -> list[str]:
    from .calib import default_calib

    rows = default_calib().read_text(encoding="utf-8").splitlines()
    # the tail of the file: far from the head rows that calibration reads
    return [json.loads(r)["question"] for r in rows[-n:]]


def _load(kind: str, spec: str | None, backend: str, threads: int):
    """(model, weight bytes). The target runs on the same runtime as the artifacts (onnxruntime,
    quantized GGUF weights), so latencies compare like with like; int8 is torch's dynamic copy."""
    from hola_ros.core.engines import load_engine, load_l1

    if kind == "target":
        m = load_engine(spec, threads=threads)
        return m, m.info.get("weights_bytes") or sum(f.stat().st_size for f in Path(m.source).glob("*.safetensors"))
    if kind == "int8":
        m = load_l1("int8", spec, threads=threads)
        return m, _int8_bytes(m.model)
    m = load_engine(spec, backend=backend, threads=threads)
    return m, m.info["manifest"]["bytes"]["weights"]


def _int8_bytes(model) -> int:
    """int8 weights + their scales/zero points + the float parameters left (embedding, norms)."""
    import torch

    total = 0
    for mod in model.modules():
        if isinstance(mod, torch.ao.nn.quantized.dynamic.Linear):
            w, b = mod._weight_bias()
            channels = w.q_per_channel_scales().numel() if w.qscheme() in (
                torch.per_channel_affine, torch.per_channel_symmetric) else 1
            total += w.numel() + 12 * channels + (0 if b is None else b.numel() * 4)
    seen = set()
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _solo(kind, spec, backend, threads, latency_tokens) -> dict:
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    model, weight_bytes = _load(kind, spec, backend, threads)
    load_s = time.perf_counter() - t0
    ids = model.chat_ids([{"role": "user", "content": _prompts(1)[0]}])
    sess = model.new_session()
    t0 = time.perf_counter()
    logits = sess.forward(ids, last_only=True)
    prefill_s = time.perf_counter() - t0
    times = []
    tok = int(logits[-1].argmax())
    for _ in range(latency_tokens):
        t0 = time.perf_counter()
        logits = sess.forward([tok], last_only=True)
        times.append(time.perf_counter() - t0)
        tok = int(logits[-1].argmax())
    return {"kind": kind, "spec": str(spec), "backend": model.info.get("backend", "torch"),
            "weights_bytes": int(weight_bytes), "peak_rss_mb": round(_rss_mb(), 1),
            "rss_before_load_mb": round(rss0, 1), "load_s": round(load_s, 2), "prompt_tokens": len(ids),
            "prefill_s": round(prefill_s, 4), "ms_per_token": round(1000 * statistics.median(times), 3),
            "ms_per_token_p90": round(1000 * sorted(times)[int(0.9 * (len(times) - 1))], 3)}


def _hsd(kind, spec, target_spec, backend, threads, prompts, max_new_tokens) -> dict:
    from hola_ros.core.drafters import LocalDrafter
    from hola_ros.core.engines import load_engine
    from hola_ros.core.hsd import GenerationConfig, generate

    target = load_engine(target_spec, threads=threads)
    draft, _ = _load(kind, spec, backend, threads)
    runs = []
    for i, q in enumerate(_prompts(prompts)):
        ids = target.chat_ids([{"role": "user", "content": q}])
        ar = generate(target, ids, GenerationConfig(max_new_tokens=max_new_tokens, mode="ar"))
        hsd = generate(target, ids, GenerationConfig(max_new_tokens=max_new_tokens),
                       drafter=LocalDrafter(ngram=False, model=draft), request_id=f"p{i}")
        runs.append({"identical": ar.token_ids == hsd.token_ids, "new_tokens": len(hsd.token_ids),
                     "ar_s": ar.stats["total_s"], "hsd_s": hsd.stats["total_s"],
                     "acceptance_rate": hsd.stats["acceptance_rate"],
                     "mean_accepted_block": hsd.stats["mean_accepted_block"],
                     "draft_s": hsd.stats["draft_s"], "verify_s": hsd.stats["verify_s"]})
    tokens = sum(r["new_tokens"] for r in runs)
    return {"kind": kind, "spec": str(spec), "backend": draft.info.get("backend", "torch"), "runs": runs,
            "identical": all(r["identical"] for r in runs),
            "acceptance_rate": round(statistics.mean(r["acceptance_rate"] for r in runs), 4),
            "mean_accepted_block": round(statistics.mean(r["mean_accepted_block"] for r in runs), 3),
            "ar_tok_s": round(tokens / sum(r["ar_s"] for r in runs), 2),
            "hsd_tok_s": round(tokens / sum(r["hsd_s"] for r in runs), 2),
            "speedup": round(sum(r["ar_s"] for r in runs) / sum(r["hsd_s"] for r in runs), 3),
            "draft_share": round(sum(r["draft_s"] for r in runs) / sum(r["hsd_s"] for r in runs), 3)}


def _child(args: dict) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hola_ros.core.models import set_threads

    set_threads(args["threads"])
    if args["what"] == "solo":
        return _solo(args["kind"], args["spec"], args["backend"], args["threads"], args["latency_tokens"])
    return _hsd(args["kind"], args["spec"], args["target"], args["backend"], args["threads"], args["prompts"],
                args["max_new_tokens"])


def _spawn(args: dict, log=print) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log(f"bench {args['what']} {args['kind']} {args['spec']}")
    proc = subprocess.run([sys.executable, "-m", "hola_ros.core.lobi.bench", json.dumps(args)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}",
                **{k: args[k] for k in ("kind", "spec")}}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(artifacts, model=None, backend="auto", prompts=4, max_new_tokens=96, latency_tokens=48, threads=2,
        int8=True, log=print) -> dict:
    from hola_ros.core.model_store import TEST_MODEL

    model = model or TEST_MODEL  # Lo-Bi builds llama-architecture models (lobi.arch)
    common = dict(threads=threads, backend=backend, latency_tokens=latency_tokens, prompts=prompts,
                  max_new_tokens=max_new_tokens, target=model)
    drafters = ([("int8", model)] if int8 else []) + [("artifact", str(a)) for a in artifacts]
    report = {"model": model, "threads": threads, "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg(), "settings": common, "solo": [], "hsd": []}
    for kind, spec in [("target", model)] + drafters:
        report["solo"].append(_spawn(dict(common, what="solo", kind=kind, spec=spec), log))
    for kind, spec in drafters:
        report["hsd"].append(_spawn(dict(common, what="hsd", kind=kind, spec=spec), log))
    report["load_average_end"] = os.getloadavg()
    return report


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    solo = report["solo"]
    target = next((s for s in solo if s.get("kind") == "target" and "error" not in s), None)
    hsd = {(h["kind"], h["spec"]): h for h in report["hsd"]}
    table = Table(title=f"Lo-Bi benchmark ({report['model']}, {report['threads']} threads)")
    for col in ("model", "backend", "weights MB", "x target", "peak RSS MB", "ms/token", "x target",
                "HSD accept", "tokens/verify", "HSD speed-up vs AR", "lossless"):
        table.add_column(col, justify="left" if col in ("model", "backend") else "right")
    for s in solo:
        if "error" in s:
            table.add_row(f"{s['kind']} {s['spec']}", "error", s["error"], *[""] * 8)
            continue
        h = hsd.get((s["kind"], s["spec"]), {})
        name = s["kind"] if s["kind"] != "artifact" else Path(s["spec"]).name
        ratio = lambda a, b: f"{a / b:.3f}" if target else "-"  # noqa: E731
        table.add_row(name, s["backend"], f"{s['weights_bytes'] / 1e6:.1f}",
                      ratio(s["weights_bytes"], target["weights_bytes"]) if target else "-",
                      f"{s['peak_rss_mb']:.0f}", f"{s['ms_per_token']:.1f}",
                      ratio(s["ms_per_token"], target["ms_per_token"]) if target else "-",
                      f"{h['acceptance_rate']:.3f}" if "acceptance_rate" in h else "-",
                      f"{h['mean_accepted_block']:.2f}" if "mean_accepted_block" in h else "-",
                      f"{h['speedup']:.2f}x" if "speedup" in h else (h.get("error", "-") if h else "-"),
                      str(h.get("identical", "-")))
    Console().print(table)


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
