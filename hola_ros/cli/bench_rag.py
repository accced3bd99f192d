"""hola-ros bench-rag: retrieval latency at >= 100k passages, and GSM8K exact match with vs without
auto-gated retrieval of worked examples (same model, same greedy decoding)."""

from hola_ros.package_data import gsm8k_train

DEFAULT_DATA = str(gsm8k_train())


def register(sub) -> None:
    p = sub.add_parser("bench-rag", help="benchmark retrieval: latency at 100k passages, GSM8K EM with/without RAG")
    p.add_argument("--part", choices=["latency", "em", "all"], default="all")
    p.add_argument("--data", default=DEFAULT_DATA, help="GSM8K-format train JSONL")
    p.add_argument("--passages", type=int, default=100_000, help="latency corpus size (default 100000)")
    p.add_argument("--queries", type=int, default=200, help="latency queries (default 200)")
    p.add_argument("--index-types", default="flat,ivf,hnsw", help="index types compared at full size")
    p.add_argument("--embedder-backends", default="torch,onnxruntime",
                   help="query-embedding backends timed side by side; the last one embeds the corpus and "
                        "times the searches (default torch,onnxruntime)")
    p.add_argument("--index", help="latency on this existing index instead of the generated corpus")
    p.add_argument("--vectors", choices=["embedded", "random"], default="embedded",
                   help="random: search timings on seeded random unit vectors instead of embedding the "
                        "corpus (a proxy when embedding 100k passages does not fit the time; queries stay real)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--limit", type=int, default=30, help="EM questions (default 30)")
    p.add_argument("--offset", type=int, default=100,
                   help="first held-out item for EM (default 100: calibrate-gate uses items [0, 100))")
    p.add_argument("--modes", default="off,auto", help="retrieval modes compared for EM (off,auto,single,multi)")
    p.add_argument("--max-new-tokens", type=int, default=192)
    p.add_argument("--thresholds", help="gate thresholds YAML (default: the packaged config)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default="results/bench_rag.json")
    p.set_defaults(run=run)


def _pct(values, q):
    import numpy as np
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def synthetic_corpus(examples, n: int, seed: int = 0) -> list[str]:
    """GSM8K questions and rationale lines, then copies with every number redrawn until n distinct."""
    import random
    import re

    rng = random.Random(seed)
    units = []
    for e in examples:
        units.append(e.question)
        units += [line.strip() for line in e.rationale.split("\n")[:-1] if len(line.split()) >= 4]
    seen, out = set(), []

    def redraw(m):
        digits = len(m.group(0))
        return str(rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits - 1))

    copy = 0
    while len(out) < n:
        for u in units:
            text = u if copy == 0 else re.sub(r"\d+", redraw, u)
            if text not in seen:
                seen.add(text)
                out.append(text)
                if len(out) == n:
                    break
        copy += 1
        if copy > 50:
            raise RuntimeError(f"could only make {len(out)} distinct passages")
    return out


def _embed_by_backend(args, queries):
    """Time single-query embedding on each backend over the same queries; the last backend's
    embedder, timings and vectors go on to the search measurements."""
    from hola_ros.core.retrieval.embedder import Embedder

    by_backend, last = {}, None
    for backend in [b.strip() for b in args.embedder_backends.split(",") if b.strip()]:
        embedder = Embedder.shared(backend=backend)
        embed_ms, qvecs = _embed_queries(embedder, queries)
        by_backend[backend] = {"ran_on": embedder.backend, "p50_ms": _pct(embed_ms, 50), "p95_ms": _pct(embed_ms, 95)}
        last = (embedder, embed_ms, qvecs)
    if last is None:
        raise ValueError("--embedder-backends names no backend")
    return by_backend, *last


def _embed_queries(embedder, queries):
    import time

    import numpy as np

    for q in queries[:10]:
        embedder.encode([q])  # warm-up
    embed_ms, qvecs = [], []
    for q in queries:
        t = time.perf_counter()
        qvecs.append(embedder.encode([q])[0])
        embed_ms.append((time.perf_counter() - t) * 1e3)
    return embed_ms, np.stack(qvecs)


def _search_types(args, vectors, qvecs, embed_ms, log) -> dict:
    """Build each index type over `vectors`; time builds and single-query searches; recall vs flat."""
    import time

    import faiss
    import numpy as np

    from hola_ros.core.retrieval.store import build_faiss_index

    exact, types = None, {}
    for kind in [k.strip() for k in args.index_types.split(",") if k.strip()]:
        t = time.perf_counter()
        index, params = build_faiss_index(vectors, kind)
        build_s = time.perf_counter() - t
        index_mb = faiss.serialize_index(index).nbytes / 2**20
        search_ms, ids = [], []
        for v in qvecs:
            t = time.perf_counter()
            _, i = index.search(v[None], 6)
            search_ms.append((time.perf_counter() - t) * 1e3)
            ids.append(i[0][:3])
        ids = np.array(ids)
        if kind == "flat":
            exact = ids
        recall = None if exact is None else float(np.mean([len(set(a) & set(b)) / 3 for a, b in zip(ids, exact)]))
        total = np.array(embed_ms) + np.array(search_ms)
        types[kind] = {"params": params, "build_s": round(build_s, 2), "index_mb": round(index_mb, 1),
                       "search_p50_ms": _pct(search_ms, 50),
                       "search_p95_ms": _pct(search_ms, 95), "embed_plus_search_p50_ms": _pct(total, 50),
                       "embed_plus_search_p95_ms": _pct(total, 95), "recall_at_3_vs_flat": recall}
        log(f"{kind}: {types[kind]}")
        del index
    return types


def bench_latency(args, log) -> dict:
    import json
    import time
    from pathlib import Path

    import numpy as np
    import psutil

    from hola_ros.core.retrieval import gsm8k
    from hola_ros.core.retrieval.adacomp import AdaCompRetriever
    from hola_ros.core.retrieval.ingest import cache_dir, ingest
    from hola_ros.core.retrieval.store import IndexStore

    proc = psutil.Process()
    examples = gsm8k.load(args.data)
    queries = [e.question for e in gsm8k.split(examples)[1][:args.queries]]
    embed_by_backend, embedder, embed_ms, qvecs = _embed_by_backend(args, queries)
    if args.vectors == "random":
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((args.passages, embedder.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return {"corpus": f"{args.passages} seeded random unit vectors (search proxy; queries are real "
                          "MiniLM embeddings of GSM8K questions)", "embed_backend": embedder.backend,
                "embed_p50_ms": _pct(embed_ms, 50), "embed_p95_ms": _pct(embed_ms, 95),
                "embed_by_backend": embed_by_backend,
                "types": _search_types(args, vectors, qvecs, embed_ms, log)}
    rss0 = proc.memory_info().rss
    if args.index:
        index_dir, corpus = Path(args.index), f"existing index {args.index}"
    else:
        work = cache_dir() / f"bench-rag-{args.passages}"
        index_dir, corpus = work / "index", "GSM8K-train questions + rationale lines, copies with numbers redrawn"
        jsonl = work / "passages.jsonl"
        if not jsonl.is_file():
            work.mkdir(parents=True, exist_ok=True)
            with open(jsonl, "w", encoding="utf-8") as f:
                for t in synthetic_corpus(examples, args.passages):
                    f.write(json.dumps({"text": t}) + "\n")
        report = ingest(index_dir, [jsonl], embedder=embedder, progress=True)
        log(f"ingest: {report.total_passages} passages, embedded {report.new_passages} in {report.embed_s:.1f} s")
    # the one-time embedding may have run earlier (then this run found the index current)
    manifest = json.loads((index_dir / "manifest.json").read_text())
    build = {"passages": manifest["count"], "index_type": manifest["index"]["type"],
             "last_ingest": manifest.get("last_ingest")}

    store = IndexStore.load(index_dir)
    vectors = np.ascontiguousarray(store.embeddings, dtype=np.float32)
    types = _search_types(args, vectors, qvecs, embed_ms, log)

    rss_before = proc.memory_info().rss
    retriever = AdaCompRetriever(index_dir, embedder=embedder, gate_model=None, thresholds={})
    rss_after = proc.memory_info().rss
    retrieve_ms = []
    for q in queries:
        t = time.perf_counter()
        retriever.retrieve(q, mode="single")
        retrieve_ms.append((time.perf_counter() - t) * 1e3)
    files = {p.name: p.stat().st_size for p in index_dir.iterdir() if p.is_file()}
    return {
        "corpus": corpus, "build": build,
        "embed_backend": embedder.backend, "embed_p50_ms": _pct(embed_ms, 50), "embed_p95_ms": _pct(embed_ms, 95),
        "embed_by_backend": embed_by_backend, "types": types,
        "retrieve_single_p50_ms": _pct(retrieve_ms, 50), "retrieve_single_p95_ms": _pct(retrieve_ms, 95),
        "memory": {"index_dir_mb": {k: round(v / 2**20, 1) for k, v in files.items()},
                   "retriever_load_rss_mb": round((rss_after - rss_before) / 2**20, 1),
                   "process_rss_mb": round(rss_after / 2**20, 1),
                   "rss_before_ingest_mb": round(rss0 / 2**20, 1)},
    }


def summarise(rows: list[dict]) -> dict:
    """EM and retrieval figures per mode from bench_em rows."""
    summary = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        rs = [r for r in rows if r["mode"] == mode]
        gates = [r["gate_ms"] for r in rs if r["gate_ms"] is not None]
        summary[mode] = {"em": sum(r["em"] for r in rs), "n": len(rs), "em_rate": round(sum(r["em"] for r in rs) / len(rs), 4),
                         "levels": {str(k): sum(r["level"] == k for r in rs) for k in (0, 1, 2)},
                         "mean_context_tokens": round(sum(r["context_tokens"] for r in rs) / len(rs), 1),
                         "mean_retrievals": round(sum(r["retrievals"] for r in rs) / len(rs), 2),
                         "gate_p50_ms": _pct(gates, 50), "mean_gen_s": round(sum(r["gen_s"] for r in rs) / len(rs), 2)}
    return summary


def bench_em(args, log) -> dict:
    import json
    import time
    from pathlib import Path

    from hola_ros.core.hsd import GenerationConfig, generate
    from hola_ros.core.engines import load_engine
    from hola_ros.core.retrieval import gsm8k
    from hola_ros.core.pipeline import follow_up_query
    from hola_ros.core.retrieval.adacomp import AdaCompRetriever, gather_context
    from hola_ros.core.retrieval.prompting import compose_messages
    from hola_ros.core.retrieval.gate import load_thresholds

    index_dir, held = gsm8k.build_index(args.data, progress=True)
    items = held[args.offset:args.offset + args.limit]
    target = load_engine(args.model)
    gate_lm = load_engine(args.model, backend="torch", packed=False)  # the gate needs gradients
    thresholds = load_thresholds(args.thresholds)
    retriever = AdaCompRetriever(index_dir, gate_model=gate_lm, thresholds=thresholds,
                                 count_tokens=lambda t: len(target.encode(t)))
    cfg = GenerationConfig(mode="ar", temperature=0.0, max_new_tokens=args.max_new_tokens)

    def follow_up(question, passages):  # what the verifier does at level 2
        return follow_up_query(target, question, passages)

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    rows = []
    partial = Path(args.out).with_suffix(".rows.jsonl")  # per-answer rows as they come (long runs)
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text("")
    for n, e in enumerate(items, 1):
        for mode in modes:
            t = time.perf_counter()
            d = gather_context(e.question, mode, retriever.retrieve, follow_up)
            retrieval_s = time.perf_counter() - t
            res = generate(target, target.chat_ids(compose_messages(e.question, d.passages, d.level > 0)), cfg)
            rows.append({"line": e.line, "mode": mode, "level": d.level, "score": d.to_dict()["score"],
                         "retrievals": d.retrievals, "context_tokens": d.context_tokens,
                         "retrieval_s": round(retrieval_s, 3), "gate_ms": d.detail.get("timings", {}).get("gate_ms"),
                         "gen_s": res.stats.get("total_s"), "new_tokens": len(res.token_ids),
                         "pred": gsm8k.extract_answer(res.text), "gold": e.answer,
                         "em": gsm8k.exact_match(res.text, e.answer)})
        with open(partial, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows[-len(modes):])
        log(f"[{n}/{len(items)}] " + "  ".join(f"{r['mode']}: L{r['level']} em={int(r['em'])}"
                                                for r in rows[-len(modes):]))
    summary = summarise(rows)
    return {"model": target.name, "items": f"held-out fold 0 items [{args.offset}, {args.offset + len(items)})",
            "thresholds": thresholds.get("file", "built-in defaults"), "max_new_tokens": args.max_new_tokens,
            "summary": summary, "rows": rows}


def run(args) -> int:
    import json
    import os
    import platform
    import sys
    import time
    from pathlib import Path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    result = {"command": "hola-ros " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "processor": platform.processor() or platform.machine()}}
    if args.part in ("latency", "all"):
        result["latency"] = bench_latency(args, log)
    if args.part in ("em", "all"):
        result["em"] = bench_em(args, log)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    printable = {k: v for k, v in result.items() if k != "em"}
    if "em" in result:
        printable["em"] = {k: v for k, v in result["em"].items() if k != "rows"}
    print(json.dumps(printable, indent=1))
    print(f"wrote {out}")
    return 0
