"""Retrieval, step 1: chunking, ingest (idempotence, append, replace, prune), reload, search, errors."""
import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hola_ros.core.retrieval.chunking import (  # noqa: E402
    ChunkingConfig, chunk_text, join_units, split_sentences, split_units)
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


TABLE_DOC = """# Codes

Codes have the form E-nnn. They show on the tablet.

| Code | Meaning |
|---|---|
""" + "\n".join(f"| E-{i:03d} | fault number {i} of the left drive unit |" for i in range(100, 130)) + """

## Notes

- first item wraps
  onto a second line.
- second item. It has two sentences.
"""


def test_chunks_keep_rows_whole_repeat_the_table_header_and_carry_the_heading():
    chunks = chunk_text(TABLE_DOC, ChunkingConfig(size=40, overlap=10), markdown=True)
    table = [c for c in chunks if "| E-" in c]
    assert len(table) > 2  # the table spans several chunks
    for c in table:
        lines = c.split("\n")
        assert lines[0] == "# Codes"
        header = lines.index("| Code | Meaning |")
        assert lines[header + 1] == "|---|---|"
        rows = [line for line in lines if line.startswith("| E-")]
        assert all(line.endswith("left drive unit |") for line in rows)  # never cut mid-row
    every_row = {line for c in table for line in c.split("\n") if line.startswith("| E-")}
    assert len(every_row) == 30  # nothing lost
    notes = [c for c in chunks if c.startswith("# Codes > Notes")]
    assert notes == ["# Codes > Notes\n- first item wraps onto a second line.\n- second item. It has two sentences."]
    prose = chunks[0].split("\n")
    assert prose[:2] == ["# Codes", "Codes have the form E-nnn. They show on the tablet."]


def test_chunks_share_whole_units_and_split_sentences():
    text = " ".join(f"Sentence number {i} has five words." for i in range(30))
    chunks = chunk_text(text, ChunkingConfig(size=20, overlap=6), markdown=False)
    units = [split_sentences(c) for c in chunks]
    assert all(len(c.split()) <= 20 for c in chunks)
    assert all(u[-1].endswith("words.") for u in units)  # whole sentences only
    assert units[1][0] == units[0][-1]  # one shared sentence (6 words fit the overlap)
    assert {s for u in units for s in u} == {f"Sentence number {i} has five words." for i in range(30)}
    assert split_sentences("Use e.g. the key. Lift 3.2 m high! Done?") == ["Use e.g. the key.", "Lift 3.2 m high!",
                                                                          "Done?"]
    with pytest.raises(ValueError, match="overlap"):
        ChunkingConfig(size=20, overlap=20)


def test_split_and_join_units_round_trip_and_keep_headers():
    chunk = chunk_text(TABLE_DOC, ChunkingConfig(size=60, overlap=0), markdown=True)[1]
    parts = split_units(chunk)
    assert parts.heading == "# Codes" and len(parts.headers) == 1
    assert join_units(parts, range(len(parts.units))) == chunk
    one = join_units(parts, [len(parts.units) - 1])
    assert one.split("\n")[:3] == ["# Codes", "| Code | Meaning |", "|---|---|"] and one.count("| E-") == 1


def test_ingest_is_idempotent_appends_and_replaces(tmp_path, corpus, embedder):
    idx = tmp_path / "idx"
    first = ingest(idx, [corpus], embedder=embedder)
    assert len(first.added) == 3 and first.total_passages >= 3
    before = {n: (idx / n).read_bytes() for n in ("index.faiss", "passages.jsonl", "embeddings.npy", "manifest.json")}
    lexical_files = sorted(p.name for p in (idx / "lexical").iterdir())

    again = ingest(idx, [corpus], embedder=embedder)
    assert not again.changed and len(again.unchanged) == 3 and again.new_passages == 0
    assert {n: (idx / n).read_bytes() for n in before} == before
    assert sorted(p.name for p in (idx / "lexical").iterdir()) == lexical_files

    (corpus / "new.txt").write_text("The ferry to Puffin Island leaves the harbour at noon on weekdays.")
    appended = ingest(idx, [corpus], embedder=embedder)
    assert [os.path.basename(p) for p in appended.added] == ["new.txt"]
    assert appended.total_passages == first.total_passages + 1
    store = IndexStore.load(idx)
    assert top_source(store, embedder, "When does the boat to Puffin Island depart?") == "new.txt"
    assert store.lexical_search("Puffin ferry", 1)[0].passage["source"] == "new.txt"  # BM25 follows the append

    (corpus / "bakery.txt").write_text("The bakery on Mill Street closed in 2019; it is a bookshop now.")
    replaced = ingest(idx, [corpus], embedder=embedder)
    assert [os.path.basename(p) for p in replaced.replaced] == ["bakery.txt"]
    store = IndexStore.load(idx)
    texts = [p["text"] for p in store.passages]
    assert not any("Sourdough" in t for t in texts) and any("bookshop" in t for t in texts)
    assert store.lexical_search("sourdough", 5) == [] and store.lexical_search("bookshop", 1)
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
    assert manifest["chunking"] == {"size": 40, "overlap": 8, "unit": "words", "chunker": "structured-2"}
    assert manifest["format"] == 2 and manifest["lexical"]["library"] == "bm25s"
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
    with pytest.raises(IngestError, match=r"no \.txt, \.md, .*\.pdf, \.jsonl files"):
        ingest(tmp_path / "idx", [empty], embedder=embedder)
    (empty / "blank.md").write_text("  \n\n")
    with pytest.raises(IngestError, match=r"empty corpus.*1 empty file"):
        ingest(tmp_path / "idx", [empty], embedder=embedder)
    with pytest.raises(IngestError, match="no such file"):
        ingest(tmp_path / "idx", [tmp_path / "nope"], embedder=embedder)
    (tmp_path / "x.doc").write_bytes(b"\xd0\xcf")
    with pytest.raises(IngestError, match="unsupported file type '.doc'"):
        ingest(tmp_path / "idx", [tmp_path / "x.doc"], embedder=embedder)
    (tmp_path / "x.pdf").write_bytes(b"%PDF-1.4 truncated")
    with pytest.raises(IngestError, match="x.pdf: not a readable PDF"):
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
    lexical = store.lexical_search("What does error E-214 mean?", 3)
    assert all("E-214" in h.passage["text"] for h in lexical[:2])  # the identifier is one BM25 term
    assert any("| E-214 |" in h.passage["text"] for h in lexical[:2])


def test_an_index_of_an_older_format_is_refused_with_the_command_and_the_demo_index_rebuilds(
        tmp_path, monkeypatch, corpus, embedder):
    idx = tmp_path / "idx"
    ingest(idx, [corpus], embedder=embedder)
    manifest = json.loads((idx / "manifest.json").read_text())
    (idx / "manifest.json").write_text(json.dumps(manifest | {"format": 1}))
    with pytest.raises(StoreError, match=r"format 1 \(word-window chunks and no lexical index\).*--rebuild"):
        IndexStore.load(idx)
    with pytest.raises(IngestError, match="--rebuild"):
        ingest(idx, [corpus], embedder=embedder)
    assert ingest(idx, [corpus], embedder=embedder, rebuild=True).total_passages == len(IndexStore.load(idx))

    monkeypatch.setenv("HOLA_ROS_CACHE", str(tmp_path / "cache"))
    demo = default_index_dir()
    old = json.loads((demo / "manifest.json").read_text())
    (demo / "manifest.json").write_text(json.dumps(old | {"format": 1}))
    assert default_index_dir() == demo and IndexStore.load(demo).manifest["format"] == 2
