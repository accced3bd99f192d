"""Retrieval, step 1: chunking, ingest (idempotence, append, replace, prune), reload, search, errors."""
import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hola_ros.core.retrieval.chunking import ChunkingConfig, chunk_text  # noqa: E402
from hola_ros.core.retrieval.ingest import IngestError, default_index_dir, ingest  # noqa: E402
from hola_ros.core.retrieval.store import IndexStore, StoreError, build_faiss_index, resolve_index_type  # noqa: E402

DOCS = {
    "lighthouse.md": "# Lighthouse\n\nThe lighthouse on Gull Rock flashes white every 7 seconds. "
                     "Its keeper climbs 112 steps to reach the lamp room.",
    "bakery.txt": "The bakery on Mill Street opens at 6 am and sells rye bread and cinnamon rolls. "
                  "Sourdough is baked only on Fridays.",
    "volcano.md": "# Volcanoes\n\n## Mount Ash\n\nMount Ash last erupted in 1821; lava flows reached the "
                  "eastern valley. Scientists monitor sulphur dioxide emissions from its crater.",
}


@pytest.fixture(scope="module")
def embedder():
    from hola_ros.core.retrieval.embedder import Embedder
    return Embedder.shared()


@pytest.fixture
def corpus(tmp_path):
    src = tmp_path / "docs"
    src.mkdir()
    for name, text in DOCS.items():
        (src / name).write_text(text)
    return src


def top_source(store, embedder, query):
    return store.search(embedder.encode([query]), 1)[0][0].passage["source"]


def test_chunking_windows_overlap_and_headings():
    text = "# Title\n\n## Part\n\n" + " ".join(f"w{i}" for i in range(50))
    chunks = chunk_text(text, ChunkingConfig(size=20, overlap=5), markdown=True)
    assert all(c.startswith("Title > Part\n") for c in chunks)
    bodies = [c.split("\n", 1)[1].split() for c in chunks]
    assert all(len(b) <= 20 for b in bodies)
    assert bodies[1][:5] == bodies[0][-5:]  # overlap
    assert bodies[-1][-1] == "w49"  # nothing lost at the end
    assert {w for b in bodies for w in b} == {f"w{i}" for i in range(50)}
    with pytest.raises(ValueError, match="overlap"):
        ChunkingConfig(size=20, overlap=20)


def test_ingest_is_idempotent_appends_and_replaces(tmp_path, corpus, embedder):
    idx = tmp_path / "idx"
    first = ingest(idx, [corpus], embedder=embedder)
    assert len(first.added) == 3 and first.total_passages >= 3
    before = {n: (idx / n).read_bytes() for n in ("index.faiss", "passages.jsonl", "embeddings.npy")}

    again = ingest(idx, [corpus], embedder=embedder)
    assert not again.changed and len(again.unchanged) == 3 and again.new_passages == 0
    assert {n: (idx / n).read_bytes() for n in before} == before

    (corpus / "new.txt").write_text("The ferry to Puffin Island leaves the harbour at noon on weekdays.")
    appended = ingest(idx, [corpus], embedder=embedder)
    assert [os.path.basename(p) for p in appended.added] == ["new.txt"]
    assert appended.total_passages == first.total_passages + 1
    store = IndexStore.load(idx)
    assert top_source(store, embedder, "When does the boat to Puffin Island depart?") == "new.txt"

    (corpus / "bakery.txt").write_text("The bakery on Mill Street closed in 2019; it is a bookshop now.")
    replaced = ingest(idx, [corpus], embedder=embedder)
    assert [os.path.basename(p) for p in replaced.replaced] == ["bakery.txt"]
    store = IndexStore.load(idx)
    texts = [p["text"] for p in store.passages]
    assert not any("Sourdough" in t for t in texts) and any("bookshop" in t for t in texts)
    assert len(store) == store.index.ntotal == store.embeddings.shape[0]

    (corpus / "volcano.md").unlink()
    pruned = ingest(idx, [corpus], embedder=embedder, prune=True)
    assert [os.path.basename(p) for p in pruned.removed] == ["volcano.md"]
    assert all(p["source"] != "volcano.md" for p in IndexStore.load(idx).passages)


def test_reload_and_query_finds_its_source(tmp_path, corpus, embedder):
    idx = tmp_path / "idx"
    ingest(idx, [corpus], embedder=embedder, chunking=ChunkingConfig(size=40, overlap=8))
    store = IndexStore.load(idx)
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["embedding_model"] == {**manifest["embedding_model"], "name": "all-MiniLM-L6-v2", "dim": 384}
    assert manifest["chunking"] == {"size": 40, "overlap": 8, "unit": "words"}
    assert all(len(s["sha256"]) == 64 for s in manifest["sources"].values())
    assert top_source(store, embedder, "How many stairs does the lamp keeper climb?") == "lighthouse.md"
    assert top_source(store, embedder, "When can I buy sourdough?") == "bakery.txt"
    assert top_source(store, embedder, "When did the volcano erupt?") == "volcano.md"
    # chunking is fixed once built: a different one needs --rebuild
    with pytest.raises(IngestError, match="rebuild"):
        ingest(idx, [corpus], embedder=embedder, chunking=ChunkingConfig(size=60, overlap=8))


def test_jsonl_field_selector(tmp_path, embedder):
    f = tmp_path / "qa.jsonl"
    rows = [{"q": "What colour is the sky on Mars?", "meta": {"a": "Butterscotch during the day."}},
            {"q": "How many legs has a spider?", "meta": {"a": 8}}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    report = ingest(tmp_path / "idx", [f], embedder=embedder, field="q,meta.a")
    store = IndexStore.load(tmp_path / "idx")
    assert report.total_passages == 2
    assert store.passages[1]["text"] == "How many legs has a spider?\n8"
    assert store.passages[1]["source"] == "qa.jsonl:2"


@pytest.mark.parametrize("content,field,match", [
    ('{"text": "ok"}\n{"text": broken}\n', "text", r"qa.jsonl:2: invalid JSON"),
    ('{"text": "ok"}\n["not", "an", "object"]\n', "text", r"qa.jsonl:2: expected a JSON object"),
    ('{"body": "ok"}\n', "text", r"qa.jsonl:1: field 'text' not found \(record keys: body\)"),
    ('{"text": {"nested": 1}}\n', "text", r"field 'text' is dict"),
])
def test_malformed_jsonl_gives_clear_errors(tmp_path, embedder, content, field, match):
    (tmp_path / "qa.jsonl").write_text(content)
    with pytest.raises(IngestError, match=match):
        ingest(tmp_path / "idx", [tmp_path / "qa.jsonl"], embedder=embedder, field=field)
    assert not IndexStore.exists(tmp_path / "idx")


def test_empty_and_missing_inputs_give_clear_errors(tmp_path, embedder):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IngestError, match="no .txt, .md or .jsonl files"):
        ingest(tmp_path / "idx", [empty], embedder=embedder)
    (empty / "blank.md").write_text("  \n\n")
    with pytest.raises(IngestError, match=r"empty corpus.*1 empty file"):
        ingest(tmp_path / "idx", [empty], embedder=embedder)
    with pytest.raises(IngestError, match="no such file"):
        ingest(tmp_path / "idx", [tmp_path / "nope"], embedder=embedder)
    (tmp_path / "x.pdf").write_bytes(b"%PDF")
    with pytest.raises(IngestError, match="unsupported file type"):
        ingest(tmp_path / "idx", [tmp_path / "x.pdf"], embedder=embedder)
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(IngestError, match="not UTF-8"):
        ingest(tmp_path / "idx", [tmp_path / "latin.txt"], embedder=embedder)
    with pytest.raises(StoreError, match="no index"):
        IndexStore.load(tmp_path / "idx")


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_types_find_exact_neighbours(kind):
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((2000, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index, _ = build_faiss_index(vecs, kind)
    _, ids = index.search(vecs[:50], 1)
    assert (ids[:, 0] == np.arange(50)).mean() >= 0.9  # approximate types may miss a few


def test_index_type_by_size_and_parameter(tmp_path, corpus, embedder):
    assert resolve_index_type("auto", 100) == "flat" and resolve_index_type("auto", 10**6) == "hnsw"
    with pytest.raises(ValueError, match="unknown index type"):
        resolve_index_type("lsh", 10)
    ingest(tmp_path / "idx", [corpus], embedder=embedder, index_type="hnsw")
    store = IndexStore.load(tmp_path / "idx")
    assert store.manifest["index"]["type"] == "hnsw" and type(store.index).__name__ == "IndexHNSWFlat"
    assert top_source(store, embedder, "lava and sulphur") == "volcano.md"


def test_default_index_dir_builds_once_and_retrieves(tmp_path, monkeypatch, embedder):
    monkeypatch.setenv("HOLA_ROS_CACHE", str(tmp_path / "cache"))
    d = default_index_dir()
    stamp = (d / "manifest.json").stat().st_mtime_ns
    assert default_index_dir() == d and (d / "manifest.json").stat().st_mtime_ns == stamp  # not rebuilt
    store = IndexStore.load(d)
    assert top_source(store, embedder, "Which charging docks are the fast chargers?") == "02-charging-docks.md"
    assert top_source(store, embedder, "What does error E-517 mean?") == "04-error-codes.md"
