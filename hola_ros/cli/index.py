"""hola-ros index: build or update a retrieval index from folders of Markdown, HTML, PDF, text and JSONL."""


def register(sub) -> None:
    p = sub.add_parser("index", help="build or append a retrieval index (Markdown, HTML, PDF, text, JSONL)",
                       description="Build or update an index directory. Unchanged files are skipped, new "
                                   "files appended, changed files replaced.")
    p.add_argument("paths", nargs="*", help="files or folders (.md, .html, .pdf, .txt, .jsonl); default with --demo: "
                                           "the demo KB")
    p.add_argument("-o", "--out", help="index directory (default with --demo: the cached demo index)")
    p.add_argument("--demo", action="store_true", help="build the packaged demo knowledge base's index")
    p.add_argument("--field", default="text",
                   help="JSONL field selector: 'text', 'question,answer' (joined), 'meta.body' (nested)")
    p.add_argument("--chunk-size", type=int, help="words per passage (default 120; fixed once an index exists)")
    p.add_argument("--overlap", type=int, help="words shared by consecutive passages (default 24)")
    p.add_argument("--index-type", choices=["auto", "flat", "ivf", "hnsw"],
                   help="FAISS index type (default auto: flat up to 20k passages, HNSW above)")
    p.add_argument("--embedder", help="local sentence-transformers model directory (default all-MiniLM-L6-v2)")
    p.add_argument("--prune", action="store_true", help="drop indexed files that are not among PATHS")
    p.add_argument("--rebuild", action="store_true", help="start from an empty index")
    p.add_argument("--query", help="after building, show the retrieval decision for this query (no LM)")
    p.set_defaults(run=run)


def run(args) -> int:
    import json
    import os
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hola_ros.core.retrieval.chunking import ChunkingConfig
    from hola_ros.core.retrieval.ingest import IngestError, demo_index_path, demo_kb_dir, ingest
    from hola_ros.core.retrieval.store import StoreError

    paths, out, prune = args.paths, args.out, args.prune
    if args.demo:
        paths = paths or [demo_kb_dir()]
        out = out or demo_index_path(args.embedder)
        prune = True  # the demo index mirrors the KB folder
    if not out or not paths:
        print("hola-ros index: give PATHS and --out DIR (or --demo)", file=sys.stderr)
        return 2
    try:
        chunking = None
        if args.chunk_size or args.overlap is not None:
            d = ChunkingConfig()
            chunking = ChunkingConfig(args.chunk_size or d.size, d.overlap if args.overlap is None else args.overlap)
        report = ingest(out, paths, embedder=args.embedder, chunking=chunking, field=args.field,
                        index_type=args.index_type, prune=prune, rebuild=args.rebuild, progress=True)
    except (IngestError, StoreError, FileNotFoundError, ValueError) as e:
        print(f"hola-ros index: {e}", file=sys.stderr)
        return 1
    print(f"index {report.index_dir}: {report.total_passages} passages ({report.index_type}); "
          f"files added {len(report.added)}, replaced {len(report.replaced)}, unchanged {len(report.unchanged)}, "
          f"removed {len(report.removed)}, empty {len(report.skipped_empty)}; "
          f"{report.new_passages} passages embedded in {report.embed_s:.1f} s, total {report.total_s:.1f} s")
    if args.query:
        from hola_ros.core.retrieval.adacomp import AdaCompRetriever

        decision = AdaCompRetriever(out, embedder=args.embedder).retrieve(args.query)
        print(json.dumps(decision.to_dict(), indent=1, ensure_ascii=False))
    return 0
