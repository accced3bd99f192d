"""AdaComp-RAG: per query, a retrieval level (0 none, 1 single-shot, 2 multi-step), k and passage
trimming that fit a context-token budget, and every decision reported.

Retrieval is hybrid: the dense FAISS neighbours (MiniLM cosine) and the BM25 hits of the lexical
index are fused by reciprocal rank, so an exact identifier (E-214, CD-5) ranks its passage first
even where the dense similarity misses it.

`AdaCompRetriever.retrieve` does one retrieval step (it runs in the retriever node);
`gather_context` is the one place the level-2 loop lives (retrieve, follow-up query, retrieve
again, merge, re-fit the budget), whatever transport `retrieve` uses.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from . import lexical
from .chunking import join_units, split_units
from .gate import ComplexityGate, evidence_level, load_thresholds, level_for, merge_thresholds
from .ingest import default_index_dir  # noqa: F401  (part of this module's API)
from .prompting import chat_ids, follow_up_messages, format_passage
from .store import IndexStore

MODES = ("auto", "off", "single", "multi")
MIN_TRIMMED_TOKENS = 24  # a trimmed passage shorter than this is more noise than evidence
RRF_K = 60  # reciprocal rank fusion: score = sum over rankings of 1 / (RRF_K + rank)
LEXICAL_CANDIDATES = 20  # BM25 hits and dense neighbours each ranking contributes at most
BUDGET_PERCENTILE = 75  # the passage size the budget makes room for, top_k times (adapted_budget)
BUDGET_SAMPLE = 1000  # passages whose size is measured at load


@dataclass
class Passage:
    text: str
    source: str
    score: float  # cosine similarity of the passage to the query that retrieved it
    tokens: int = 0  # tokens this passage takes in the context block (0: not counted)
    trimmed: bool = False
    section: str = ""  # heading path of the section it comes from ("Setup > Networking")
    page: int = 0  # page of a PDF source (1-based); 0: not paged


@dataclass
class RetrievalDecision:
    level: int
    score: float  # gradient gate's complexity score in [0, 1]; nan when not computed (evidence gate, forced)
    passages: list[Passage] = field(default_factory=list)
    context_tokens: int = 0
    retrievals: int = 0  # index searches made (the auto gate searches for evidence even at level 0)
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["score"] = None if math.isnan(self.score) else self.score
        return d


@dataclass
class Candidate:
    id: int
    passage: dict
    dense: float  # cosine similarity
    bm25: float  # 0 when the lexical index did not return it
    fused: float


def lm_follow_up(model, tokenizer, max_new_tokens: int = 32) -> Callable[[str, list[Passage]], str]:
    """A follow-up writer from a transformers causal LM (greedy), for in-process use and calibration."""
    def write(question: str, passages: list[Passage]) -> str:
        import torch

        ids = chat_ids(tokenizer, follow_up_messages(question, passages))
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        text = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
        return text.strip().split("\n")[0].strip().strip('"')
    return write


def _unit_relevance(text: str, query_terms: set[str]) -> float:
    """How much of the query a unit (row, item, sentence) holds: shared terms (a word that extends a
    query word by a suffix counts: "Weight" for "weigh"), identifiers x3."""
    words = [q for q in query_terms if len(q) >= lexical.SAME_WORD_PREFIX and q.isalpha()]
    found = {t for t in lexical.terms(text) if t in query_terms or any(
        t.startswith(q) and len(t) - len(q) <= lexical.EXTENSION_LETTERS for q in words)}
    return sum(3.0 if any(c.isdigit() for c in t) and any(c.isalpha() for c in t) else 1.0 for t in found)


def trim_passage(p: Passage, room: int, count_tokens: Callable[[str], int], query: str = "") -> Passage | None:
    """The passage cut to whole units (rows, items, sentences) whose formatted entry fits `room`
    tokens. Units that share the most terms with the query are kept first (ties: earlier first), then
    written back in passage order with the heading line and each kept row's table header."""
    parts = split_units(p.text)
    query_terms = set(lexical.terms(query))
    order = sorted(range(len(parts.units)), key=lambda i: (-_unit_relevance(parts.units[i].text, query_terms), i))
    keep, best = [], None
    for i in order:
        text = join_units(parts, keep + [i])
        n = count_tokens(format_passage(replace(p, text=text)))
        if n <= room:
            keep.append(i)
            best = replace(p, text=text, tokens=n, trimmed=True)
    return best if best is not None and len(keep) < len(parts.units) else None


def focus_rows(passages: list[Passage], query: str) -> tuple[list[Passage], list[dict]]:
    """When the query names identifiers (E-305, CD-5) that table rows of the passages hold, every
    table keeps only those rows, each row once: the model reads the row it was asked about, not its
    neighbours. Prose stays; a passage left with nothing is dropped. Returns (passages, dropped)."""
    wanted = set(lexical.identifiers(query))
    split = [(p, split_units(p.text)) for p in passages]
    if not wanted or not any(u.table is not None and wanted & set(lexical.terms(u.text))
                             for _, parts in split for u in parts.units):
        return passages, []
    out, dropped, shown = [], [], set()
    for p, parts in split:
        keep = [i for i, u in enumerate(parts.units) if u.table is None
                or (wanted & set(lexical.terms(u.text)) and (p.source, u.text) not in shown)]
        shown |= {(p.source, parts.units[i].text) for i in keep if parts.units[i].table is not None}
        left_out = len(parts.units) - len(keep)
        if not keep:
            dropped.append({"source": p.source, "reason": "no row with the query's identifiers"})
        elif left_out:
            out.append(replace(p, text=join_units(parts, keep), tokens=0, trimmed=True))
            dropped.append({"source": p.source, "reason": "rows without the query's identifiers",
                            "units_dropped": left_out})
        else:
            out.append(p)
    return out, dropped


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _named_columns(headers: list[str], query_terms: list[str]) -> list[int]:
    """The columns whose header (without a trailing unit, "(W)") the query names as a phrase of two
    terms or more (a model's name, "TurtleBot 4"; a one-word header such as "Meaning" names an
    attribute every row has); a longer name claims its words first, so "TurtleBot 4 Lite" is not
    also "TurtleBot 4"."""
    names = [lexical.terms(re.sub(r"\s*\([^)]*\)\s*$", "", h)) for h in headers]
    names = [n if len(n) >= 2 else [] for n in names]
    claimed, named = set(), []
    for i in sorted(range(len(names)), key=lambda i: -len(names[i])):
        n = len(names[i])
        for start in range(len(query_terms) - n + 1) if n else ():
            span = set(range(start, start + n))
            if query_terms[start:start + n] == names[i] and not span & claimed:
                claimed |= span
                named.append(i)
                break
    return sorted(named)


def focus_columns(passages: list[Passage], query: str) -> tuple[list[Passage], list[dict]]:
    """A table with one column per model or variant ("| Feature | TurtleBot 4 Lite | TurtleBot 4 |")
    keeps, beside its first column, only the columns the query names (`_named_columns`); a table
    none or all of whose columns the query names stays whole. The 0.5B read the Lite's weight for
    the TurtleBot 4's from the whole row."""
    asked = lexical.terms(query)
    out, dropped = [], []
    for p in passages:
        parts = split_units(p.text)
        keep_cols = {}
        for start, header in parts.headers.items():
            columns = _cells(header[0])[1:]
            named = _named_columns(columns, asked)
            if len(columns) >= 2 and named and len(named) < len(columns):
                keep_cols[start] = [0] + [i + 1 for i in named]
        if not keep_cols:
            out.append(p)
            continue
        text = p.text
        for start, cols in keep_cols.items():
            for line in parts.headers[start][:1] + [u.text for u in parts.units if u.table == start]:
                cells = _cells(line)
                text = text.replace(line, "| " + " | ".join(cells[c] for c in cols if c < len(cells)) + " |", 1)
            text = text.replace(parts.headers[start][1], "|" + "|".join(["---"] * len(cols)) + "|", 1)
        out.append(replace(p, text=text, tokens=0, trimmed=True))
        dropped.append({"source": p.source, "reason": "columns the query does not name",
                        "kept": [_cells(parts.headers[s][0])[c] for s, cols in keep_cols.items() for c in cols]})
    return out, dropped


def fit_budget(passages: list[Passage], budget: int, count_tokens: Callable[[str], int], query: str = "",
               min_tokens: int = MIN_TRIMMED_TOKENS) -> tuple[list[Passage], list[dict]]:
    """Passages in order while they fit; one that does not is trimmed to whole units (if at least
    `min_tokens` remain), later ones still get the room left. Returns (kept, what was dropped)."""
    out, dropped, used = [], [], 0
    for p in passages:
        n = count_tokens(format_passage(p))
        if used + n <= budget:
            out.append(replace(p, tokens=n))
            used += n
            continue
        cut = trim_passage(p, budget - used, count_tokens, query) if budget - used >= min_tokens else None
        if cut is None:
            dropped.append({"source": p.source, "reason": "budget", "tokens": n})
            continue
        units_before, units_after = len(split_units(p.text).units), len(split_units(cut.text).units)
        dropped.append({"source": p.source, "reason": "trimmed to the budget",
                        "units_dropped": units_before - units_after, "tokens": n - cut.tokens})
        out.append(cut)
        used += cut.tokens
    return out, dropped


def adapted_budget(floor: int, top_k: int, passage_tokens: int) -> int:
    """The context budget for an index: at least `floor`, raised so that top_k passages of the
    index's typical size fit (a manual's passages run longer than a short KB's: its 75th percentile
    was 213 tokens against the demo KB's 123), at most twice the floor."""
    return min(2 * floor, max(floor, top_k * passage_tokens))


class AdaCompRetriever:
    def __init__(self, index_dir, embedder=None, gate_model=None, thresholds: dict | None = None,
                 budget_tokens: int = 384, top_k: int = 3, count_tokens: Callable[[str], int] | None = None,
                 candidates: int | None = None, embedder_backend: str = "auto", threads: int | None = None):
        """index_dir: an index built by `hola-ros index` (or `default_index_dir()`).
        embedder: None (the one the index was built with, else the default), a model path or an Embedder.
        embedder_backend: auto / torch / onnxruntime, for an embedder given by path (see embedder.py).
        gate_model: None: the evidence gate (retrieval scores, no LM); an object with `.model`
          (transformers causal LM) and `.tokenizer`: the paper's gradient gate on that LM.
        thresholds: a dict (merged over the defaults); None: the packaged calibrated file if any.
        count_tokens: counts context tokens; default: the embedder's tokenizer (the retriever holds no
          copy of the target's; WordPiece counts come close to the target's BPE counts on English text).
        """
        from .embedder import Embedder

        if budget_tokens <= 0 or top_k <= 0:
            raise ValueError("budget_tokens and top_k must be positive")
        self.store = IndexStore.load(index_dir)
        em = self.store.manifest["embedding_model"]
        if isinstance(embedder, Embedder):
            self.embedder = embedder
        else:
            built_with = Path(em["path"])
            self.embedder = Embedder.shared(embedder or (built_with if built_with.is_dir() else None),
                                            backend=embedder_backend, threads=threads)
        if self.embedder.name != em["name"] or self.embedder.dim != em["dim"]:
            raise ValueError(f"index {index_dir} was built with {em['name']} (dim {em['dim']}), "
                             f"not {self.embedder.name} (dim {self.embedder.dim})")
        self.thresholds = load_thresholds() if thresholds is None else merge_thresholds(thresholds)
        self.gate = (ComplexityGate(gate_model.model, gate_model.tokenizer, self.thresholds)
                     if gate_model is not None else None)
        self.top_k = top_k
        self.candidates = candidates or 2 * top_k
        self.count_tokens = count_tokens or self.embedder.count_tokens
        self.budget_tokens = adapted_budget(budget_tokens, top_k, self._passage_tokens(BUDGET_PERCENTILE))

    def _passage_tokens(self, percentile: float) -> int:
        """Tokens of the index's passages at `percentile`, as formatted in the prompt (a stride sample
        of at most BUDGET_SAMPLE passages, so a large index loads in seconds)."""
        import numpy as np

        passages = self.store.passages[::max(1, len(self.store.passages) // BUDGET_SAMPLE)]
        if not passages:
            return 0
        counts = [self.count_tokens(format_passage(Passage(p["text"], p["source"], 0.0))) for p in passages]
        return int(np.percentile(counts, percentile))

    def retrieve(self, query: str, mode: str = "auto", budget_tokens: int | None = None) -> RetrievalDecision:
        if mode not in MODES:
            raise ValueError(f"unknown retrieval mode {mode!r}; expected one of {', '.join(MODES)}")
        if not query or not query.strip():
            raise ValueError("empty query")
        budget = self.budget_tokens if budget_tokens is None or budget_tokens < 0 else int(budget_tokens)
        detail = {"mode": mode, "budget_tokens": budget, "top_k": self.top_k, "index": str(self.store.path)}
        if mode == "off":
            return RetrievalDecision(0, math.nan, [], 0, 0, detail | {"gate": "off"})

        t0 = time.perf_counter()
        fused, timings = self._search(query)
        chosen, focused = focus_rows(self._select(fused), query)
        chosen, narrowed = focus_columns(chosen, query)
        focused += narrowed
        passages, dropped = fit_budget(chosen, budget, self.count_tokens, query)
        dropped = focused + dropped
        t1 = time.perf_counter()
        evidence = self._evidence(query, fused, passages)
        detail.update(similarity={"top": max((c.dense for c in fused), default=0.0),
                                  "scores": [round(c.dense, 4) for c in fused[:self.top_k]],
                                  "sources": [c.passage["source"] for c in fused[:self.top_k]]},
                      fused=[{"source": c.passage["source"], "chunk": c.passage.get("chunk"), "dense": round(c.dense, 4),
                              "bm25": round(c.bm25, 3), "rrf": round(c.fused, 5)} for c in fused[:self.candidates]],
                      dropped=dropped)
        score, level = self._decide(mode, query, evidence, detail)
        if level == 2 and evidence["missing"]:  # first of two steps: half the budget, room for the follow-up
            passages, dropped = fit_budget(chosen, budget // 2, self.count_tokens, query)
            detail["dropped"] = focused + dropped
        timings["gate_ms"] = (time.perf_counter() - t1) * 1e3
        timings["select_ms"] = (t1 - t0) * 1e3 - timings["embed_ms"] - timings["search_ms"]
        detail["thresholds"] = {k: self.thresholds[k] for k in
                                ("delta1", "delta2", "sim_min", "known_min", "phrases_min", "missing_min", "specific_share",
                                 "sim_gap", "bm25_ratio", "calibrated")}
        detail["timings"] = {k: round(v, 3) for k, v in timings.items()}
        if evidence["missing"]:
            detail["follow_up_query"] = " ".join(evidence["missing"])
        passages = passages if level > 0 else []
        detail["k"] = len(passages)
        return RetrievalDecision(level, score, passages, sum(p.tokens for p in passages), 1, detail)

    def _decide(self, mode: str, query: str, evidence: dict, detail: dict) -> tuple[float, int]:
        """(complexity score, level): forced, the evidence gate, or the gradient gate."""
        detail["evidence"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in evidence.items()}
        if mode != "auto":
            detail["gate"] = "forced"
            return math.nan, (1 if mode == "single" else 2)
        if self.gate is None:
            detail["gate"] = "evidence"
            return math.nan, evidence_level(evidence, self.thresholds)
        feats = self.gate.features(query, [evidence["top_sim"]])
        score = self.gate.score(feats)
        detail["gate"] = "lm+similarity"
        detail["features"] = {k: round(v, 5) if isinstance(v, float) else v for k, v in feats.items()}
        return score, level_for(score, self.thresholds)

    def _search(self, query: str) -> tuple[list[Candidate], dict]:
        """Dense and BM25 candidates fused by reciprocal rank, best first."""
        import numpy as np

        t0 = time.perf_counter()
        qvec = self.embedder.encode([query])
        t1 = time.perf_counter()
        n = max(self.candidates, LEXICAL_CANDIDATES)
        dense = self.store.search(qvec, n)[0]
        bm25 = self.store.lexical_search(query, n)
        t2 = time.perf_counter()
        found: dict[int, Candidate] = {}
        for rank, h in enumerate(dense):
            found[h.id] = Candidate(h.id, h.passage, h.score, 0.0, 1.0 / (RRF_K + rank + 1))
        for rank, h in enumerate(bm25):
            if h.id not in found:
                vec = np.asarray(self.store.embeddings[h.id], dtype=np.float32)
                found[h.id] = Candidate(h.id, h.passage, float(vec @ qvec[0]), 0.0, 0.0)
            found[h.id].bm25 = h.score
            found[h.id].fused += 1.0 / (RRF_K + rank + 1)
        # an identifier of the query (E-214, CD-5) that a passage holds puts it first: exact codes win
        wanted = set(lexical.identifiers(query))
        held = {c.id: len(wanted & set(lexical.terms(c.passage["text"]))) if wanted else 0 for c in found.values()}
        fused = sorted(found.values(), key=lambda c: (-held[c.id], -c.fused, c.id))
        return fused, {"embed_ms": (t1 - t0) * 1e3, "search_ms": (t2 - t1) * 1e3}

    def _select(self, fused: list[Candidate]) -> list[Passage]:
        """k adapts to the evidence: candidates well below the best one on both signals are dropped."""
        if not fused:
            return []
        best_dense = max(c.dense for c in fused)
        best_bm25 = max(c.bm25 for c in fused)
        seen, chosen = set(), []
        for c in fused:
            text = c.passage["text"]
            weak = (c.dense < best_dense - self.thresholds["sim_gap"]
                    and c.bm25 < self.thresholds["bm25_ratio"] * best_bm25)
            if weak or text in seen:
                continue
            seen.add(text)
            chosen.append(Passage(text, c.passage["source"], c.dense, section=c.passage.get("section", ""),
                                  page=int(c.passage.get("page", 0))))
            if len(chosen) == self.top_k:
                break
        return chosen

    def _evidence(self, query: str, fused: list[Candidate], passages: list[Passage]) -> dict:
        """What the documents say about the query, without an LM: the best cosine similarity, the
        share of the query's terms the index knows, its two-word phrases that the candidates hold,
        identifiers the index holds, and the specific query terms that the selected passages still
        miss (the follow-up query of level 2); and what the index has never seen: the query's terms
        (`unknown_terms`; words that only ask, as in "how often", do not count) and its codes
        (`unknown_codes`: E-999, CD-7; a measurement such as 1.5m/s starts with a digit: no code); and
        `specific_terms`, the query's terms that few passages hold, known or not (words that only ask
        aside): what the figures of an answer must stand beside (`support.py`)."""
        concepts = lexical.concepts(query)
        known = self.store.lexical.known(concepts)
        unknown = [t for t in concepts if t not in known and t not in lexical.ASKING_WORDS]
        specific = [t for t in known if self.store.lexical.doc_share(t) <= self.thresholds["specific_share"]]
        rare = [t for t in concepts if t not in lexical.ASKING_WORDS
                and self.store.lexical.doc_share(t) <= self.thresholds["specific_share"]]
        covered = set(lexical.terms(" ".join(p.text for p in passages)))
        ids = lexical.identifiers(query)
        return {"top_sim": max((c.dense for c in fused), default=0.0),
                "known": len(known) / len(concepts) if concepts else 0.0,
                "phrases": lexical.shared_phrases(query, [c.passage["text"] for c in fused]),
                "identifiers": len(self.store.lexical.known(ids)),
                "missing": [t for t in specific if t not in covered],
                "unknown_terms": unknown,
                "unknown_codes": [t for t in ids if t in unknown and t[0].isalpha()],
                "specific_terms": rare}


def gather_context(question: str, mode: str,
                   retrieve: Callable[[str, str, int | None], RetrievalDecision],
                   follow_up: Callable[[str, list[Passage]], str] | None,
                   budget_tokens: int | None = None) -> RetrievalDecision:
    """Run the retrieval for one request; at level 2, a follow-up query and a second retrieval.

    retrieve(query, mode, budget) may be in-process (`AdaCompRetriever.retrieve`) or a ROS client.
    A question that joins several ("When is a battery replaced, and how much does it weigh?") is
    retrieved part by part (level 2, unless the mode is `single`): the two facts often sit in two
    documents, and the whole question's passages held only one of them on the tune half.
    Otherwise the follow-up query is the retriever's own (the question's specific terms its first
    passages miss) when it has one, else follow_up(question, passages) writes it (the target
    model). The first step keeps at most half the budget so the second one has room; the merged
    list is de-duplicated and re-fitted to the budget using each passage's token count. The second
    step's passages come first: they hold the specific terms the first ones missed, and the 0.5B
    refused "How long does a Tern T2 take to boot ...?" with the boot passage fourth of six.
    """
    first = retrieve(question, mode, budget_tokens)
    budget = int(first.detail.get("budget_tokens", budget_tokens or 0)) or sum(p.tokens for p in first.passages)
    parts = lexical.question_parts(question)
    if first.level >= 1 and mode != "single" and len(parts) > 1:
        return _by_parts(parts, first, retrieve, budget)
    if first.level < 2:
        return first
    detail = dict(first.detail)
    query2 = first.detail.get("follow_up_query") or (follow_up(question, first.passages) if follow_up else "")
    query2 = (query2 or "").strip()
    if not query2 or query2.lower() == question.strip().lower():
        detail["follow_up"] = {"query": query2, "skipped": "no distinct follow-up query"}
        return RetrievalDecision(2, first.score, first.passages, first.context_tokens, first.retrievals, detail)

    kept, used = [], 0
    for p in first.passages:
        if used + p.tokens > budget // 2 and kept:
            break
        kept.append(p)
        used += p.tokens
    second = retrieve(query2, "single", max(budget - used, 1))
    merged, used = _merge(second.passages + kept, budget)
    detail["follow_up"] = {"query": query2, "by": "retriever" if first.detail.get("follow_up_query") else "model",
                           "detail": second.detail}
    return RetrievalDecision(2, first.score, merged, used, first.retrievals + second.retrievals, detail)


def _merge(passages: list[Passage], budget: int) -> tuple[list[Passage], int]:
    """Passages in order, each text once, as many as the token budget holds: (kept, tokens)."""
    merged, seen, used = [], set(), 0
    for p in passages:
        if p.text in seen or used + p.tokens > budget:
            continue
        seen.add(p.text)
        merged.append(p)
        used += p.tokens
    return merged, used


def _by_parts(parts: list[str], first: RetrievalDecision, retrieve, budget: int) -> RetrievalDecision:
    """Level 2 of a question that joins several: one single-shot retrieval per part with an equal
    share of the budget, merged in part order (the whole question's own passages only decided
    the level). A part that points back ("... in them?") is searched with the first part's words.
    `detail.parts[i].passages`: the merged passages (indices) part i's own retrieval found."""
    share = max(budget // len(parts), 1)
    queries = lexical.part_queries(parts)
    found = [retrieve(query, "single", share) for query in queries]
    merged, used = _merge([p for d in found for p in d.passages], budget)
    detail = dict(first.detail, k=len(merged),
                  parts=[{"question": part, "query": q, "sources": [p.source for p in d.passages],
                          "passages": [i for i, m in enumerate(merged) if m.text in {p.text for p in d.passages}],
                          "detail": d.detail}
                         for part, q, d in zip(parts, queries, found)])
    return RetrievalDecision(2, first.score, merged, used, first.retrievals + sum(d.retrievals for d in found), detail)


__all__ = ["AdaCompRetriever", "RetrievalDecision", "Passage", "gather_context", "default_index_dir",
           "lm_follow_up", "fit_budget", "trim_passage", "MODES"]
