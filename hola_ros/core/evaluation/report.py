"""REPORT.md + PNG plots from one run's measurements (a JSON-able dict), and the two
measurement no other module makes: acceptance vs draft length.

measurements = {
  "meta":        command, date, machine, load averages
  "eval":        hola-ros eval's summary ({"meta", "items", "configs"}) plus "rows" (per sample)
  "bench":       evaluation.speed.run's report (llama.cpp among its systems), or {"error": ...}
  "lobi_bench":  hola_ros.core.lobi.bench.run's report, or None
  "lobi_bits":   {"4": blocks, "8": ..., "16": ...} of the served artifact, or None
  "draft_sweep": {"drafter": str, "rows": [{draft_len, acceptance_rate, tokens_per_s, ...}]}
}
Every ratio compares two systems measured on the same items inside this one run.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

# the paper's claims (notes/hola-method.md): "LLMs on a Budget? Say HOLA", arXiv 2506.18952
PAPER = {
    "gsm8k_ema_gain_pp": 17.6,
    "arc_mca_gain_pp": 10.5,
    "hsd_speedup": "up to 2-3x, without quality loss",
    "gpt2_latency_ms": (152, 104),
    "gpt2_memory_mb": (2400, 1650),
    "jetson": {"latency_ms": 841, "peak_mb": 1230, "samples_per_s": 1.2},
    "lobi_8bit_share": 0.70,
}
PAIRS = (("hsd", "ar"), ("hsd_rag", "ar"), ("hsd_rag", "hsd"), ("entropy_gate", "hsd"), ("entropy_gate", "ar"),
         ("lobi", "ar"))
PLOTS = ("tokens_per_s.png", "latency_vs_length.png", "memory.png", "acceptance_vs_draft_len.png")


def draft_sweep(target, prompts: list[list[int]], make_drafter, lengths=(1, 2, 4, 8, 16), max_new_tokens: int = 64):
    """HSD at fixed draft lengths (adaptation off): acceptance and speed per length, same prompts."""
    from hola_ros.core.hsd import GenerationConfig, generate

    rows = []
    for k in lengths:
        acc = prop = toks = 0
        secs = 0.0
        for i, ids in enumerate(prompts):
            cfg = GenerationConfig(max_new_tokens=max_new_tokens, draft_len=k,
                                   draft_len_max=max(k, 16), adaptive_draft=False)
            res = generate(target, ids, cfg, drafter=make_drafter(), request_id=f"sweep{k}-{i}")
            p = sum(res.stats["proposed_per_level"].values())
            acc += res.stats["acceptance_rate"] * p
            prop += p
            toks += res.stats["new_tokens"]
            secs += res.stats["total_s"]
        rows.append({"draft_len": k, "acceptance_rate": round(acc / prop, 4) if prop else None, "proposed": prop,
                     "tokens_per_s": round(toks / secs, 3) if secs else None, "new_tokens": toks})
    return rows


def paired(rows: list[dict], a: str, b: str) -> dict | None:
    """a against b on the items both answered: time ratio, accuracy difference, identical outputs."""
    ra = {r["id"]: r for r in rows if r["config"] == a}
    rb = {r["id"]: r for r in rows if r["config"] == b}
    ids = sorted(set(ra) & set(rb))
    if not ids:
        return None
    gen_a, gen_b = sum(ra[i]["gen_s"] for i in ids), sum(rb[i]["gen_s"] for i in ids)
    lat_a, lat_b = sum(ra[i]["latency_s"] for i in ids), sum(rb[i]["latency_s"] for i in ids)
    return {"a": a, "b": b, "n": len(ids),
            "gen_speedup": round(gen_b / gen_a, 3) if gen_a else None,  # > 1: a generates faster than b
            "latency_ratio": round(lat_a / lat_b, 3) if lat_b else None,
            "median_item_speedup": round(statistics.median(rb[i]["gen_s"] / ra[i]["gen_s"] for i in ids
                                                           if ra[i]["gen_s"] > 0), 3),
            "accuracy_diff_pp": round(100 * (sum(bool(ra[i]["correct"]) for i in ids)
                                             - sum(bool(rb[i]["correct"]) for i in ids)) / len(ids), 2),
            "same_text": round(sum(ra[i]["text"] == rb[i]["text"] for i in ids) / len(ids), 4)}


def _fmt(v, f="{:.2f}", none="-"):
    return none if v is None else f.format(v)


def _plots(m: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = {c: f for c, f in m["eval"]["configs"].items() if f.get("n")}
    rows = m["eval"].get("rows", [])

    # tokens/s: the eval configurations (real answers), then the fixed-length benchmark systems
    bars = [(f"eval {c}", f["tokens_per_s"] or 0.0) for c, f in configs.items()]
    bench = m.get("bench") or {}
    for set_name, systems in (bench.get("summary") or {}).items():
        bars += [(f"bench {set_name} {s}", v["median_tokens_per_s"]) for s, v in systems.items()]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(bars) + 1.5))
    ax.barh([b[0] for b in bars], [b[1] for b in bars], color=["C0" if b[0].startswith("eval") else "C1" for b in bars])
    ax.invert_yaxis()
    ax.set_xlabel("tokens / s (prefill included)")
    ax.set_title("Decoding speed per configuration")
    fig.tight_layout()
    fig.savefig(out / "tokens_per_s.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, c in enumerate(configs):
        pts = [(r["new_tokens"], r["latency_s"]) for r in rows if r["config"] == c]
        if pts:
            ax.scatter(*zip(*pts), s=14, label=c, color=f"C{i}", alpha=0.75)
    ax.set_xlabel("output tokens")
    ax.set_ylabel("latency per sample (s, retrieval included)")
    ax.set_title("Latency vs output length")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency_vs_length.png", dpi=110)
    plt.close(fig)

    mem = [(f"eval {c}", f["peak_rss_mb"]) for c, f in configs.items()]
    for s in (m.get("lobi_bench") or {}).get("solo", []):
        if "error" not in s:
            mem.append((f"lobi-bench {s['kind'] if s['kind'] != 'artifact' else Path(s['spec']).name}", s["peak_rss_mb"]))
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(mem) + 1.5))
    ax.barh([x[0] for x in mem], [x[1] for x in mem], color="C2")
    ax.invert_yaxis()
    ax.set_xlabel("peak RSS (MB), one process per configuration")
    ax.set_title("Memory per configuration")
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=110)
    plt.close(fig)

    sweep = [r for r in (m.get("draft_sweep") or {}).get("rows", []) if r["acceptance_rate"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if sweep:
        ax.plot([r["draft_len"] for r in sweep], [r["acceptance_rate"] for r in sweep], "o-", label="acceptance")
        ax.set_xscale("log", base=2)
        ax2 = ax.twinx()
        ax2.plot([r["draft_len"] for r in sweep], [r["tokens_per_s"] for r in sweep], "s--", color="C1",
                 label="tokens/s")
        ax2.set_ylabel("tokens / s", color="C1")
    ax.set_xlabel("draft length (fixed)")
    ax.set_ylabel("acceptance rate")
    ax.set_ylim(0, 1)
    ax.set_title(f"Acceptance vs draft length ({(m.get('draft_sweep') or {}).get('drafter', 'not measured')})")
    fig.tight_layout()
    fig.savefig(out / "acceptance_vs_draft_len.png", dpi=110)
    plt.close(fig)


def _eval_table(ev: dict) -> list[str]:
    task = ev["meta"]["settings"]["task"]
    acc_name = "EMA" if task == "gsm8k" else "MCA (likelihood)"
    head = ["config", "n", acc_name] + (["MCA (letter)"] if task == "arc" else []) + [
        "latency p50 s", "p95 s", "tokens/s", "tokens/CPU-s", "mean out tokens", "peak RSS MB", "acceptance",
        "retrieval levels"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c, f in ev["configs"].items():
        if "skipped" in f or not f.get("n"):
            why = f.get("skipped") or f.get("error") or "no samples"
            lines.append(f"| {c} | 0 | skipped: {why} |" + " |" * (len(head) - 3))
            continue
        cells = [c + (" (lossy)" if f.get("lossy") else ""), str(f["n"]), f"{f['accuracy']:.3f} ({f['correct']}/{f['n']})"]
        if task == "arc":
            cells.append(_fmt(f.get("accuracy_letter"), "{:.3f}"))
        cells += [_fmt(f["latency_p50_s"]), _fmt(f["latency_p95_s"]), _fmt(f["tokens_per_s"]),
                  _fmt(f.get("tokens_per_cpu_s")), _fmt(f.get("mean_new_tokens"), "{:.0f}"),
                  _fmt(f.get("peak_rss_mb"), "{:.0f}"), _fmt(f.get("acceptance_rate"), "{:.3f}"),
                  " ".join(f"L{k}:{v}" if k != "off" else f"off:{v}" for k, v in f.get("retrieval_levels", {}).items())]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _paper_table(m: dict, pairs: dict) -> list[str]:
    ev = m["eval"]
    cf = ev["configs"]
    task = ev["meta"]["settings"]["task"]
    n = ev["items"]["n"]
    ar, hsd, eg, lobi = (cf.get(c, {}) for c in ("ar", "hsd", "entropy_gate", "lobi"))

    def diff(a, b):
        p = pairs.get((a, b))
        return "-" if p is None else f"{p['accuracy_diff_pp']:+.1f} pp"

    lines = ["| paper claim | measured here (this machine, this run) | how |", "|---|---|---|"]
    if task == "gsm8k":
        lines.append(f"| GSM8K EMA +{PAPER['gsm8k_ema_gain_pp']} pp (HOLA vs base model) | HSD+RAG vs AR: "
                     f"{diff('hsd_rag', 'ar')}; HSD vs AR: {diff('hsd', 'ar')} (lossless by construction); "
                     f"{n} items | `hola-ros eval gsm8k`, held-out GSM8K-train items |")
    arc = ev if task == "arc" else m.get("arc")
    if arc:
        acf = arc["configs"]
        measured = [c for c in acf if acf[c].get("n")]
        best = max(measured, key=lambda c: acf[c]["accuracy"]) if measured else None
        lines.append(f"| ARC MCA +{PAPER['arc_mca_gain_pp']} pp | AR {_fmt(acf.get('ar', {}).get('accuracy'), '{:.3f}')}"
                     f", best {best} {_fmt(acf[best]['accuracy'] if best else None, '{:.3f}')} (likelihood MCA) | "
                     f"`hola-ros eval arc` |")
    else:
        lines.append(f"| ARC MCA +{PAPER['arc_mca_gain_pp']} pp | not measured: no ARC data on this machine "
                     f"(`hola-ros eval arc --data FILE` measures it) | |")
    if hsd.get("n") and hsd.get("same_text_as_ar") is not None:
        hsd_text = (f"{_fmt(hsd.get('speedup_vs_ar'))}x generation speed vs AR on the same items; output identical "
                    f"to AR on {100 * hsd['same_text_as_ar']:.0f}% of them")
    else:
        hsd_text = "not measured (needs ar and hsd in one run)"
    lines.append(f"| HSD {PAPER['hsd_speedup']} | {hsd_text} | eval; fixed-length runs in the benchmark section |")
    if eg.get("n") and eg.get("same_text_as_ar") is not None:
        lines.append(f"| the entropy gate (tau 1.5) keeps quality | LOSSY: output differs from AR on "
                     f"{100 * (1 - eg['same_text_as_ar']):.0f}% of items; EMA {diff('entropy_gate', 'ar')} vs AR; "
                     f"{_fmt(eg.get('speedup_vs_ar'))}x vs AR | eval `entropy_gate` |")
    if ar.get("n"):
        best = min((c for c in cf if cf[c].get("n")), key=lambda c: cf[c]["latency_p50_s"])
        old, new = PAPER["gpt2_latency_ms"]
        lines.append(f"| latency {old} -> {new} ms (GPT-2, -{100 * (1 - new / old):.0f}%) | p50 per answer: AR "
                     f"{ar['latency_p50_s']:.2f} s, lowest {best} {cf[best]['latency_p50_s']:.2f} s (whole answers "
                     f"of ~{ar['mean_new_tokens']:.0f} tokens) | eval |")
    old, new = PAPER["gpt2_memory_mb"]
    if lobi.get("n") and ar.get("n"):
        mem_text = (f"peak RSS AR {ar['peak_rss_mb']:.0f} MB, Lo-Bi served {lobi['peak_rss_mb']:.0f} MB "
                    f"({100 * (lobi['peak_rss_mb'] / ar['peak_rss_mb'] - 1):+.0f}%)")
    else:
        mem_text = f"Lo-Bi configuration not measured ({lobi.get('skipped', 'not requested')})"
    lines.append(f"| memory {old} -> {new} MB (-{100 * (1 - new / old):.0f}%) | {mem_text} | eval, one process "
                 f"per configuration |")
    bits = m.get("lobi_bits")
    if bits:
        share = 100 * bits.get("8", 0) / max(sum(bits.values()), 1)
        bits_text = ", ".join(f"{k}-bit: {v}" for k, v in sorted(bits.items(), key=lambda kv: int(kv[0])))
        bits_text += f" ({share:.0f}% at 8 bits, under the artifact's memory budget)"
    else:
        bits_text = "no artifact in this run"
    lines.append(f"| Lo-Bi: >{100 * PAPER['lobi_8bit_share']:.0f}% of blocks at 8 bits | {bits_text} | manifest |")
    if ar.get("n"):
        lat = [r["latency_s"] for r in ev.get("rows", []) if r["config"] == "ar"] or [ar["latency_p50_s"]]
        j = PAPER["jetson"]
        lines.append(f"| Jetson Nano: {j['latency_ms']} ms, {j['peak_mb']} MB peak, {j['samples_per_s']} samples/s "
                     f"| this CPU, AR: {ar['latency_p50_s']:.2f} s p50 per answer, {ar['peak_rss_mb']:.0f} MB "
                     f"peak, {1 / statistics.mean(lat):.3f} samples/s (other hardware, other answer lengths) | eval |")
    return lines


def build_report(m: dict, out_dir) -> Path:
    """Write REPORT.md, the four PNGs and measurements.json into out_dir; returns REPORT.md's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "measurements.json").write_text(json.dumps(m, indent=1) + "\n")
    _plots(m, out)
    ev = m["eval"]
    rows = ev.get("rows", [])
    present = {c for c, f in ev["configs"].items() if f.get("n")}
    pairs = {(a, b): p for a, b in PAIRS if a in present and b in present and (p := paired(rows, a, b))}
    meta = m.get("meta", {})
    s = ev["meta"]["settings"]
    L = [f"# HOLA on this machine: accuracy, speed, memory", "",
         f"Generated {meta.get('date', '?')} by `{meta.get('command', 'hola-ros report')}`. Machine: "
         f"{meta.get('cpus', '?')} CPUs ({meta.get('processor', '?')}), load average "
         f"{', '.join(f'{x:.1f}' for x in meta.get('load_average', []))} at the start and "
         f"{', '.join(f'{x:.1f}' for x in meta.get('load_average_end', []))} at the end. On a shared CPU every time "
         f"below is noisy; the ratios compare systems measured on the same items in this run, and tokens per "
         f"CPU-second is less sensitive to other jobs.", "",
         f"## Accuracy, latency, speed and memory per configuration ({s['task']})", "",
         f"Model `{s.get('model') or 'smollm2-135m-instruct'}`, {ev['items']['n']} items of `{s['data']}` "
         f"(offset {s['offset']}, seed {s['seed']}; items whose worked example is in the RAG index excluded: "
         f"{ev['items'].get('excluded_in_rag_index', 0)}), greedy, at most {s['max_new_tokens']} new tokens, "
         f"L1 drafter `{s.get('l1') or 'none'}`, entropy gate tau {s['tau']}, torch threads: "
         f"{s.get('threads') or 'default'}. Latency = one whole answer (retrieval included); tokens/s = output tokens / generation "
         f"time (prefill included); peak RSS = the configuration's own process.", ""]
    L += _eval_table(ev) + [""]
    if pairs:
        L += ["### Pair by pair (same items, same run)", "",
              "| a vs b | items | generation speed-up (b time / a time) | median per-item speed-up | latency a / b "
              "| accuracy a - b | identical output |", "|---|---|---|---|---|---|---|"]
        for (a, b), p in pairs.items():
            L.append(f"| {a} vs {b} | {p['n']} | {_fmt(p['gen_speedup'])}x | {_fmt(p['median_item_speedup'])}x | "
                     f"{_fmt(p['latency_ratio'])} | {p['accuracy_diff_pp']:+.1f} pp | {100 * p['same_text']:.0f}% |")
        L.append("")
    L += ["![tokens/s](tokens_per_s.png)", "", "![latency vs output length](latency_vs_length.png)", "",
          "![memory](memory.png)", ""]
    L += ["## Decoding speed benchmark (fixed-length, with peers)", ""]
    bench = m.get("bench") or {}
    if bench.get("summary"):
        from hola_ros.core.evaluation.speed import markdown

        L += [markdown(bench)]
    else:
        L += [f"Not run: {bench.get('error', 'skipped')}.", ""]
    lb = m.get("lobi_bench")
    if lb and lb.get("solo"):
        L += ["## Lo-Bi benchmark (one process per model)", "",
              "| model | weights MB | peak RSS MB | ms/token | HSD acceptance | HSD speed-up vs AR | lossless |",
              "|---|---|---|---|---|---|---|"]
        hsd_by = {(h.get("kind"), h.get("spec")): h for h in lb.get("hsd", [])}
        for so in lb["solo"]:
            if "error" in so:
                L.append(f"| {so['kind']} {so['spec']} | error: {so['error']} | | | | | |")
                continue
            h = hsd_by.get((so["kind"], so["spec"]), {})
            L.append(f"| {so['kind'] if so['kind'] != 'artifact' else Path(so['spec']).name} | "
                     f"{so['weights_bytes'] / 1e6:.1f} | {so['peak_rss_mb']:.0f} | {so['ms_per_token']:.1f} | "
                     f"{_fmt(h.get('acceptance_rate'), '{:.3f}')} | {_fmt(h.get('speedup'))} | "
                     f"{h.get('identical', '-')} |")
        L.append("")
    sweep = m.get("draft_sweep") or {}
    L += ["## Acceptance vs draft length", ""]
    if sweep.get("rows"):
        L += [f"HSD with a fixed draft length (adaptation off), drafter {sweep['drafter']}, "
              f"{sweep.get('prompts', '?')} GSM8K prompts, {sweep.get('max_new_tokens', '?')} tokens each.", "",
              "| draft length | acceptance | drafted tokens | tokens/s |", "|---|---|---|---|"]
        L += [f"| {r['draft_len']} | {_fmt(r['acceptance_rate'], '{:.3f}')} | {r['proposed']} | "
              f"{_fmt(r['tokens_per_s'])} |" for r in sweep["rows"]]
        L.append("")
    else:
        L += ["Not measured in this run.", ""]
    L += ["![acceptance vs draft length](acceptance_vs_draft_len.png)", "",
          "## The paper's claims next to these measurements", ""]
    L += _paper_table(m, pairs) + [""]
    path = out / "REPORT.md"
    path.write_text("\n".join(L))
    return path
