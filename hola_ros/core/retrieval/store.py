"""Index directory: FAISS (dense) + BM25 (lexical) indexes + passages + embeddings + manifest.

Layout of an index directory:
  manifest.json    format, embedding model, dimension, chunking, index type/params, lexical index
                   (library, version, tokenizer), source files + sha256
  passages.jsonl   one passage per line: text, source (display name), file (source key), chunk
  embeddings.npy   float32 [n, dim], L2-normalised; the source of truth the index is built from
  index.faiss      the FAISS index (inner product = cosine), rebuilt from embeddings on removals
  lexical/         the BM25 index of the passages (`lexical.LexicalIndex`), rebuilt on every change

Keeping the embeddings lets a changed or removed source be dropped without re-embedding the
rest, whatever the index type (HNSW cannot remove vectors).
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .lexical import B, K1, LexicalIndex
from .lexical import TOKENIZER as LEXICAL_TOKENIZER

# 2: structure-aware chunks (heading line, table headers, whole rows) and the BM25 index beside FAISS
FORMAT = 2
FORMAT_CHANGES = {1: "word-window chunks and no lexical index"}
INDEX_TYPES = ("auto", "flat", "ivf", "hnsw")
AUTO_FLAT_MAX = 20_000  # exact search stays well under a millisecond-per-1k-vectors up to here


class StoreError(RuntimeError):
    """A missing, inconsistent or incompatible index directory."""


@dataclass
class Hit:
    id: int
    score: float
    passage: dict


def resolve_index_type(requested: str, n: int) -> str:
    if requested not in INDEX_TYPES:
        raise ValueError(f"unknown index type {requested!r}; choose one of {', '.join(INDEX_TYPES)}")
    if requested != "auto":
        return requested
    return "flat" if n <= AUTO_FLAT_MAX else "hnsw"


def build_faiss_index(vectors: np.ndarray, kind: str):
    """Build an inner-product index of the given kind; returns (index, params)."""
    import faiss

    n, dim = vectors.shape
    if kind == "flat":
        index, params = faiss.IndexFlatIP(dim), {}
    elif kind == "hnsw":
        params = {"M": 32, "efConstruction": 80, "efSearch": 64}
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["efConstruction"]
        index.hnsw.efSearch = params["efSearch"]
    elif kind == "ivf":
        # ~4 sqrt(n) lists, with >= 39 training points per list (faiss warns below that)
        nlist = max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))
        params = {"nlist": nlist, "nprobe": min(nlist, max(8, nlist // 16))}
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        if n:
            index.train(vectors)
        index.nprobe = params["nprobe"]
    else:
        raise ValueError(f"unknown index type {kind!r}")
    if n:
        index.add(vectors)
    return index, params


def _apply_search_params(index, kind: str, params: dict) -> None:
    if kind == "hnsw":
        index.hnsw.efSearch = params["efSearch"]
    elif kind == "ivf":
        index.nprobe = params["nprobe"]


class IndexStore:
    def __init__(self, path: Path, manifest: dict, passages: list[dict], embeddings: np.ndarray, index):
        self.path = Path(path)
        self.manifest = manifest
        self.passages = passages
        self.embeddings = embeddings
        self.index = index
        self._pending: list[np.ndarray] = []  # appended vectors not yet in the index
        self._rebuild = index is None
        self.lexical: LexicalIndex | None = None  # None: (re)built from the passages when needed

    # ---- creation / loading
    @classmethod
    def create(cls, path, embedder_name: str, embedder_path: str, dim: int, chunking: dict,
               index_type: str = "auto") -> "IndexStore":
        resolve_index_type(index_type, 0)  # validate early
        manifest = {
            "format": FORMAT,
            "embedding_model": {"name": embedder_name, "path": str(embedder_path), "dim": int(dim),
                                "normalized": True, "metric": "inner_product"},
            "chunking": dict(chunking),
            "index": {"requested": index_type, "type": None, "params": {}},
            "lexical": lexical_info(),
            "count": 0,
            "sources": {},
        }
        return cls(Path(path), manifest, [], np.zeros((0, dim), np.float32), None)

    @classmethod
    def check_format(cls, path) -> None:
        """StoreError, with what to do, when the index at `path` was written in another format."""
        try:
            manifest = json.loads((Path(path) / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            raise StoreError(f"index at {path} is unreadable ({e}); rebuild it with `hola-ros index --rebuild`") from e
        found = manifest.get("format")
        if found != FORMAT:
            why = f" ({FORMAT_CHANGES[found]})" if found in FORMAT_CHANGES else ""
            raise StoreError(f"index at {path} has format {found}{why}; this version reads format {FORMAT}: "
                             "rebuild it with `hola-ros index PATHS -o DIR --rebuild` (the demo index: "
                             "`hola-ros index --demo`, or just start the retriever)")
        built = {k: v for k, v in (manifest.get("lexical") or {}).items() if k != "version"}
        if built != {k: v for k, v in lexical_info().items() if k != "version"}:
            raise StoreError(f"index at {path} has lexical index {manifest.get('lexical')}, this version uses "
                             f"{lexical_info()}; rebuild it with `hola-ros index PATHS -o DIR --rebuild`")

    @classmethod
    def exists(cls, path) -> bool:
        return (Path(path) / "manifest.json").is_file()

    @classmethod
    def load(cls, path, mmap: bool = True) -> "IndexStore":
        import faiss

        path = Path(path)
        if not cls.exists(path):
            raise StoreError(f"no index at {path} (manifest.json missing); build one with `hola-ros index`")
        cls.check_format(path)
        try:
            manifest = json.loads((path / "manifest.json").read_text())
            with open(path / "passages.jsonl", encoding="utf-8") as f:
                passages = [json.loads(line) for line in f]
            embeddings = np.load(path / "embeddings.npy", mmap_mode="r" if mmap else None)
            index = faiss.read_index(str(path / "index.faiss"))
            lexical = LexicalIndex.load(path / "lexical", len(passages))
        except (OSError, ValueError, RuntimeError) as e:
            raise StoreError(f"index at {path} is unreadable ({e}); rebuild it with `hola-ros index --rebuild`") from e
        n = manifest["count"]
        if not (len(passages) == embeddings.shape[0] == index.ntotal == n):
            raise StoreError(f"index at {path} is inconsistent (manifest {n}, passages {len(passages)}, "
                             f"embeddings {embeddings.shape[0]}, index {index.ntotal}); rebuild it")
        _apply_search_params(index, manifest["index"]["type"], manifest["index"]["params"])
        store = cls(path, manifest, passages, embeddings, index)
        store.lexical = lexical
        return store

    # ---- properties
    def __len__(self) -> int:
        return len(self.passages)

    @property
    def dim(self) -> int:
        return int(self.manifest["embedding_model"]["dim"])

    @property
    def needs_save(self) -> bool:
        kind = resolve_index_type(self.manifest["index"]["requested"], len(self.passages))
        return bool(self._pending or self._rebuild or kind != self.manifest["index"]["type"])

    @property
    def sources(self) -> dict:
        return self.manifest["sources"]

    # ---- edits (in memory until save)
    def add_source(self, key: str, info: dict, passages: list[dict], vectors: np.ndarray) -> None:
        if key in self.sources:
            raise ValueError(f"source {key} already in the index; remove it first")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(passages), self.dim):
            raise ValueError(f"expected vectors of shape ({len(passages)}, {self.dim}), got {vectors.shape}")
        start = len(self.passages)
        self.passages.extend({**p, "file": key} for p in passages)
        self.embeddings = np.concatenate([np.asarray(self.embeddings), vectors]) if start else vectors
        self._pending.append(vectors)
        self.sources[key] = {**info, "chunks": len(passages)}
        self.lexical = None

    def remove_sources(self, keys) -> int:
        keys = set(keys) & set(self.sources)
        if not keys:
            return 0
        keep = np.array([p["file"] not in keys for p in self.passages], dtype=bool)
        self.passages = [p for p, k in zip(self.passages, keep) if k]
        self.embeddings = np.asarray(self.embeddings)[keep]
        for k in keys:
            del self.sources[k]
        self._rebuild = True
        self.lexical = None
        return int((~keep).sum())

    def _sync_index(self) -> None:
        n = len(self.passages)
        kind = resolve_index_type(self.manifest["index"]["requested"], n)
        if self._rebuild or kind != self.manifest["index"]["type"] or kind == "ivf":
            # IVF centroids are trained on the data: retrain on every change
            self.index, params = build_faiss_index(np.ascontiguousarray(self.embeddings, dtype=np.float32), kind)
            self.manifest["index"].update(type=kind, params=params)
        else:
            for v in self._pending:
                self.index.add(v)
        self._pending, self._rebuild = [], False
        if self.lexical is None:
            self.lexical = LexicalIndex.build([p["text"] for p in self.passages])

    def save(self) -> None:
        import faiss

        self._sync_index()
        self.manifest["count"] = len(self.passages)
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.path.mkdir(parents=True, exist_ok=True)

        def write(name: str, fn) -> None:
            tmp = self.path / f".{name}.tmp"
            fn(tmp)
            os.replace(tmp, self.path / name)

        write("index.faiss", lambda p: faiss.write_index(self.index, str(p)))
        write("embeddings.npy", lambda p: np.save(open(p, "wb"), np.asarray(self.embeddings, dtype=np.float32)))

        def write_passages(p):
            with open(p, "w", encoding="utf-8") as f:
                for rec in self.passages:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")

        write("passages.jsonl", write_passages)
        lexical_tmp = self.path / ".lexical.tmp"
        shutil.rmtree(lexical_tmp, ignore_errors=True)
        self.lexical.save(lexical_tmp)
        shutil.rmtree(self.path / "lexical", ignore_errors=True)
        os.replace(lexical_tmp, self.path / "lexical")
        # the manifest goes last: it is what `load` trusts
        write("manifest.json", lambda p: p.write_text(json.dumps(self.manifest, indent=1, ensure_ascii=False)))

    # ---- search
    def search(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        if self._pending or self._rebuild:
            self._sync_index()
        if len(self.passages) == 0:
            raise StoreError(f"index at {self.path} is empty")
        scores, ids = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), min(k, len(self.passages)))
        return [[Hit(int(i), float(s), self.passages[i]) for s, i in zip(srow, irow) if i >= 0]
                for srow, irow in zip(scores, ids)]

    def lexical_search(self, query: str, k: int) -> list[Hit]:
        """BM25 hits (score = BM25 score), best first; only passages sharing a term with the query."""
        if self.lexical is None or self._pending or self._rebuild:
            self._sync_index()
        return [Hit(i, s, self.passages[i]) for i, s in self.lexical.search(query, k)]


def lexical_info() -> dict:
    """What the saved BM25 index depends on (the library version is recorded, not enforced)."""
    from importlib.metadata import version

    return {"library": "bm25s", "version": version("bm25s"), "tokenizer": LEXICAL_TOKENIZER, "k1": K1, "b": B}


@contextmanager
def locked(path) -> None:
    """Serialise writers of one index directory (a node and a CLI may build the same cache)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
