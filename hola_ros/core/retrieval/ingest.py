"""Files -> passages -> embeddings -> index directory.

Sources: folders (recursively) or files of Markdown (.md: front matter, HTML, Liquid templating and
code handled, `documents.markdown_sections`), HTML (.html, .htm), PDF (.pdf, `pypdf`), plain text
(.txt), and JSONL with a field selector (`"text"`, `"question,answer"` joins fields, `"meta.body"`
reads nested objects). A source is identified by its resolved path and named, in passages and
answers, by its path relative to the folder it was found in (`setup/networking.md`; a file given
by itself: its name); each passage also carries its section (heading path) and, from a PDF, its
page. A source's sha256 (and the options it was read with) decide whether a re-ingest skips it
(unchanged), replaces it (changed) or appends it (new).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .chunking import CHUNKER, ChunkingConfig, chunk_sections
from .documents import Section, html_sections, markdown_sections, pdf_sections, text_blocks
from .store import IndexStore, StoreError, locked

MARKDOWN_EXTS = (".md", ".markdown")
TEXT_EXTS = (".txt",) + MARKDOWN_EXTS
HTML_EXTS = (".html", ".htm")
PDF_EXTS = (".pdf",)
JSONL_EXTS = (".jsonl",)
SUPPORTED_EXTS = TEXT_EXTS + HTML_EXTS + PDF_EXTS + JSONL_EXTS


class IngestError(ValueError):
    """Input that cannot be indexed: missing paths, malformed files, empty corpora, mismatches."""


@dataclass
class Document:
    sections: list[Section]
    source: str  # display name: path relative to the folder it was found in, or file:line for JSONL records


@dataclass
class IngestReport:
    index_dir: str
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped_empty: list[str] = field(default_factory=list)
    new_passages: int = 0
    total_passages: int = 0
    index_type: str = ""
    embed_s: float = 0.0
    total_s: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.replaced or self.removed)


def collect_sources(paths) -> list[tuple[Path, str]]:
    """(resolved path, display name) of every supported file under `paths`, each once; hidden
    files and folders are skipped."""
    found: dict[Path, str] = {}
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED_EXTS
                            and not any(part.startswith(".") for part in f.relative_to(p).parts)):
                found.setdefault(f.resolve(), f.relative_to(p).as_posix())
        elif p.is_file():
            if p.suffix.lower() not in SUPPORTED_EXTS:
                raise IngestError(f"{p}: unsupported file type {p.suffix!r} "
                                  f"(use {', '.join(SUPPORTED_EXTS)})")
            found.setdefault(p.resolve(), p.name)
        else:
            raise IngestError(f"{p}: no such file or directory")
    return list(found.items())


def collect_files(paths) -> list[Path]:
    return [path for path, _ in collect_sources(paths)]


def _select(record: dict, selector: str, where: str) -> str:
    parts = []
    for name in (s.strip() for s in selector.split(",")):
        value = record
        for key in name.split("."):
            if not isinstance(value, dict) or key not in value:
                keys = ", ".join(sorted(record)) if isinstance(record, dict) else "-"
                raise IngestError(f"{where}: field {name!r} not found (record keys: {keys})")
            value = value[key]
        if isinstance(value, (dict, list)) or value is None:
            raise IngestError(f"{where}: field {name!r} is {type(value).__name__}, expected text or a number")
        parts.append(str(value).strip())
    return "\n\n".join(p for p in parts if p)  # one paragraph per field


def _plain(text: str) -> list[Section]:
    return [Section("", text_blocks(text.splitlines()))]


def _read_pdf(path: Path) -> list[Section]:
    from pypdf.errors import PyPdfError

    try:
        return pdf_sections(path)
    except (PyPdfError, ValueError, KeyError, OSError) as e:
        raise IngestError(f"{path}: not a readable PDF ({type(e).__name__}: {e})") from e


def read_documents(path: Path, field: str = "text", display: str | None = None) -> list[Document]:
    display = display or path.name
    suffix = path.suffix.lower()
    if suffix in PDF_EXTS:
        return [Document(_read_pdf(path), display)]
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise IngestError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    if suffix in TEXT_EXTS + HTML_EXTS:
        if not raw.strip():
            return []
        sections = (markdown_sections(raw) if suffix in MARKDOWN_EXTS else
                    html_sections(raw) if suffix in HTML_EXTS else _plain(raw))
        return [Document(sections, display)]
    docs = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise IngestError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from e
        if not isinstance(record, dict):
            raise IngestError(f"{where}: expected a JSON object per line, got {type(record).__name__}")
        text = _select(record, field, where)
        if text:
            docs.append(Document(_plain(text), f"{display}:{n}"))
    return docs


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _source_info(path: Path, field: str) -> dict:
    info = {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size}
    if path.suffix.lower() in JSONL_EXTS:
        info["field"] = field
    return info


def _same(a: dict, b: dict) -> bool:
    return a.get("sha256") == b.get("sha256") and a.get("field") == b.get("field")


def source_passages(path: Path, display: str, field: str, chunking: ChunkingConfig) -> list[dict]:
    """The passages of one source file: text, display source, chunk number, section, page."""
    return [{"text": c.text, "source": d.source, "chunk": i, "section": c.heading, "page": c.page}
            for d in read_documents(path, field, display)
            for i, c in enumerate(chunk_sections(d.sections, chunking))]


def ingest(index_dir, paths, embedder=None, chunking: ChunkingConfig | None = None, field: str = "text",
           index_type: str | None = None, prune: bool = False, rebuild: bool = False,
           progress: bool = False, batch_size: int = 256) -> IngestReport:
    """Build or update the index at `index_dir` from `paths`; idempotent for unchanged files.

    prune: drop indexed sources that are not among `paths` any more (keeps a mirror of a folder).
    rebuild: start from an empty index (needed to change the embedder or the chunking).
    progress: progress bars for reading the files and embedding the passages (stderr).
    """
    from tqdm.auto import tqdm

    from .embedder import Embedder

    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    sources = collect_sources(paths)
    if not sources:
        raise IngestError(f"no {', '.join(SUPPORTED_EXTS)} files found in {', '.join(map(str, paths))}")
    if not isinstance(embedder, Embedder):
        embedder = Embedder.shared(embedder)

    with locked(index_dir):
        store, chunking = _open_store(index_dir, embedder, chunking, index_type, rebuild)
        report = IngestReport(str(index_dir))
        todo: list[tuple[str, dict, list[dict]]] = []
        for path, display in tqdm(sources, desc="reading", unit="file", disable=not progress):
            key, info = str(path), _source_info(path, field)
            old = store.sources.get(key)
            if old and _same(old, info):
                report.unchanged.append(key)
                continue
            passages = source_passages(path, display, field, chunking)
            if not passages:
                report.skipped_empty.append(key)
                continue
            (report.replaced if old else report.added).append(key)
            todo.append((key, info, passages))

        if prune:
            wanted = {str(path) for path, _ in sources}
            report.removed = sorted(k for k in store.sources if k not in wanted)
        store.remove_sources(report.replaced + report.removed)

        texts = [p["text"] for _, _, ps in todo for p in ps]
        t1 = time.perf_counter()
        vectors = _embed(embedder, texts, batch_size, progress)
        report.embed_s = time.perf_counter() - t1 if texts else 0.0
        offset = 0
        for key, info, passages in todo:
            store.add_source(key, info, passages, vectors[offset:offset + len(passages)])
            offset += len(passages)
        report.new_passages = len(texts)

        if len(store) == 0:
            raise IngestError(f"empty corpus: no text found in {', '.join(map(str, paths))}"
                              + (f" ({len(report.skipped_empty)} empty file(s))" if report.skipped_empty else ""))
        if report.changed or rebuild or store.needs_save:
            _save(store, report, embedder, t0)
        return _finish(report, store, t0)


def remove_documents(index_dir, paths) -> IngestReport:
    """Drop the indexed sources at `paths` (files, or every indexed file under a folder); paths need
    not exist any more. An index left empty is refused (IngestError), so it always answers."""
    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    targets = [Path(p).resolve() for p in paths]
    with locked(index_dir):
        try:
            store = IndexStore.load(index_dir, mmap=False)
        except StoreError as e:
            raise IngestError(str(e)) from e
        report = IngestReport(str(index_dir))
        report.removed = sorted(k for k in store.sources
                                if any(Path(k) == t or t in Path(k).parents for t in targets))
        missing = [str(t) for t in targets if not any(Path(k) == t or t in Path(k).parents for k in report.removed)]
        if missing:
            raise IngestError(f"not in the index at {index_dir}: {', '.join(missing)}")
        if len(report.removed) == len(store.sources):
            raise IngestError(f"removing {', '.join(map(str, paths))} would leave the index at {index_dir} empty")
        store.remove_sources(report.removed)
        store.manifest["last_ingest"] = {"removed": len(report.removed), "seconds": round(time.perf_counter() - t0, 2)}
        store.save()
        return _finish(report, store, t0)


def _open_store(index_dir: Path, embedder, chunking: ChunkingConfig | None, index_type: str | None,
                rebuild: bool) -> tuple[IndexStore, ChunkingConfig]:
    """The index to update (checked against the embedder and chunking), or a new one."""
    if IndexStore.exists(index_dir) and not rebuild:
        try:
            store = IndexStore.load(index_dir, mmap=False)
        except StoreError as e:
            raise IngestError(str(e)) from e
        _check_compatible(store, embedder, chunking)
        if index_type:
            store.manifest["index"]["requested"] = index_type
        return store, chunking or ChunkingConfig.from_dict(store.manifest["chunking"])
    chunking = chunking or ChunkingConfig()
    return IndexStore.create(index_dir, embedder.name, embedder.path, embedder.dim, chunking.as_dict(),
                             index_type or "auto"), chunking


def _embed(embedder, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
    from tqdm.auto import tqdm

    if not texts:
        return np.zeros((0, embedder.dim), np.float32)
    chunks = []
    with tqdm(total=len(texts), desc="embedding", unit="passage", disable=not progress) as bar:
        for i in range(0, len(texts), batch_size):
            chunks.append(embedder.encode(texts[i:i + batch_size]))
            bar.update(len(chunks[-1]))
    return np.concatenate(chunks)


def _save(store: IndexStore, report: IngestReport, embedder, t0: float) -> None:
    store.manifest["last_ingest"] = {"new_passages": report.new_passages, "embed_s": round(report.embed_s, 2),
                                     "seconds": round(time.perf_counter() - t0, 2),
                                     "embedder_backend": embedder.backend}
    store.save()


def _finish(report: IngestReport, store: IndexStore, t0: float) -> IngestReport:
    report.total_passages = len(store)
    report.index_type = store.manifest["index"]["type"]
    report.total_s = time.perf_counter() - t0
    return report


def _check_compatible(store: IndexStore, embedder, chunking: ChunkingConfig | None) -> None:
    em = store.manifest["embedding_model"]
    if em["name"] != embedder.name or em["dim"] != embedder.dim:
        raise IngestError(f"{store.path} was built with embedder {em['name']} (dim {em['dim']}), not "
                          f"{embedder.name} (dim {embedder.dim}); use --rebuild to re-embed everything")
    if store.manifest["chunking"].get("chunker") != CHUNKER:
        raise IngestError(f"{store.path} was chunked by {store.manifest['chunking'].get('chunker')}, this version "
                          f"chunks with {CHUNKER}; use --rebuild to re-chunk everything")
    if chunking is not None and store.manifest["chunking"] != chunking.as_dict():
        raise IngestError(f"{store.path} was built with chunking {store.manifest['chunking']}, not "
                          f"{chunking.as_dict()}; use --rebuild to re-chunk everything")


# ---- the packaged demo knowledge base
def demo_kb_dir() -> Path:
    """$HOLA_ROS_KB, else the packaged data/kb (source checkout or install prefix)."""
    from hola_ros.package_data import require_package_file

    env = os.environ.get("HOLA_ROS_KB")
    return Path(env) if env and Path(env).is_dir() else require_package_file("data/kb")


def cache_dir() -> Path:
    env = os.environ.get("HOLA_ROS_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "hola_ros") / "index"


def _is_current(index_dir: Path, files: list[Path]) -> bool:
    """The index holds exactly these files, unchanged, in this version's format and chunking."""
    try:
        IndexStore.check_format(index_dir)
        manifest = json.loads((index_dir / "manifest.json").read_text())
    except (OSError, ValueError, StoreError):
        return False
    sources = manifest.get("sources", {})
    return (manifest.get("chunking") == ChunkingConfig().as_dict() and set(sources) == {str(f) for f in files}
            and all(sources[str(f)].get("sha256") == sha256_file(f) for f in files))


def _embedder_path(embedder) -> Path:
    from .embedder import default_embedder_path

    path = getattr(embedder, "path", embedder)  # an Embedder, a path, or None (the default)
    return Path(path or default_embedder_path()).resolve()


def demo_index_path(embedder=None) -> Path:
    key = hashlib.sha256(f"{demo_kb_dir()}|{_embedder_path(embedder)}".encode()).hexdigest()[:12]
    return cache_dir() / f"demo-kb-{key}"


def default_index_dir(embedder=None, in_child: bool = False) -> Path:
    """The demo KB's index, (re)built into the cache when missing, stale or in an older format
    (hashes only when current). `embedder`: an Embedder, a model path or None (the default).
    in_child: build in a child process, so a serving process never holds the embedding peak
    (the retriever node: ~0.5 GB more RSS for the 40-passage build, kept by the allocator)."""
    kb = demo_kb_dir()
    index_dir = demo_index_path(embedder)
    if _is_current(index_dir, collect_files([kb])):
        return index_dir
    if not in_child:
        ingest(index_dir, [kb], embedder=embedder, prune=True, rebuild=True)
        return index_dir
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "hola_ros.core.retrieval.ingest", str(_embedder_path(embedder))]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise IngestError(f"building the demo index in a child process failed (exit {done.returncode}): {tail}")
    return index_dir


if __name__ == "__main__":  # the child of default_index_dir(in_child=True): python -m ... EMBEDDER_DIR
    import sys

    print(default_index_dir(sys.argv[1] if len(sys.argv) > 1 else None))
