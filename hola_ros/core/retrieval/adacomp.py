"""AdaComp-RAG: per query, a retrieval level (0 none, 1 single-shot, 2 multi-step), k and passage
trimming that fit a context-token budget, and every decision reported.

`AdaCompRetriever.retrieve` does one retrieval step (it runs in the retriever node);
`gather_context` is the one place the level-2 loop lives (retrieve, follow-up query written by
the target model, retrieve again, merge, re-fit the budget), whatever transport `retrieve` uses.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .gate import ComplexityGate, level_for, load_thresholds, merge_thresholds
from .ingest import default_index_dir  # noqa: F401  (part of this module's API)
from .store import IndexStore

MODES = ("auto", "off", "single", "multi")
MIN_TRIMMED_TOKENS = 24  # a trimmed passage shorter than this is more noise than evidence

SYSTEM_PROMPT = ("Answer the question. Context passages are given; use them when they are relevant "
                 "and rely on your own knowledge otherwise.")


@dataclass
class Passage:
    text: str
    source: str
    score: float  # cosine similarity to the query that retrieved it
    tokens: int = 0  # tokens this passage takes in the context block (0: not counted)
    trimmed: bool = False


@dataclass
class RetrievalDecision:
    level: int
    score: float  # complexity score in [0, 1]; nan when not computed (forced mode, no LM)
    passages: list[Passage] = field(default_factory=list)
    context_tokens: int = 0
    retrievals: int = 0  # index searches made (the auto gate searches for evidence even at level 0)
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["score"] = None if math.isnan(self.score) else self.score
        return d


def format_passage(p: Passage) -> str:
    return f"[{p.source}]\n{p.text}\n\n"


def context_block(passages: list[Passage]) -> str:
    return "".join(format_passage(p) for p in passages).rstrip()


def compose_messages(question: str, passages: list[Passage]) -> list[dict]:
    """Chat messages for the target model; without passages, just the question."""
    if not passages:
        return [{"role": "user", "content": question}]
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Context:\n{context_block(passages)}\n\nQuestion: {question}"}]


def follow_up_messages(question: str, passages: list[Passage]) -> list[dict]:
    """Prompt asking the target model for a follow-up search query (level 2)."""
    return [{"role": "user", "content":
             f"Context:\n{context_block(passages)}\n\nQuestion: {question}\n\n"
             "Write one short search query for the information still missing to answer the question. "
             "Reply with the query only."}]


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


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode("\n\n".join(m["content"] for m in messages)))


def fit_budget(passages: list[Passage], budget: int, count_tokens: Callable[[str], int],
               min_tokens: int = MIN_TRIMMED_TOKENS) -> list[Passage]:
    """Greedily keep passages in order; trim the first one that does not fit, then stop."""
    out, used = [], 0
    for p in passages:
        n = count_tokens(format_passage(p))
        if used + n <= budget:
            out.append(Passage(p.text, p.source, p.score, n, p.trimmed))
            used += n
            continue
        room = budget - used
        if room >= min_tokens:
            cut = _trim(p, room, count_tokens)
            if cut is not None:
                out.append(cut)
        break
    return out


def _trim(p: Passage, room: int, count_tokens) -> Passage | None:
    """The longest word prefix of p (plus an ellipsis) whose formatted entry fits in `room` tokens."""
    words = p.text.split(" ")
    lo, hi, best = 1, len(words) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        cand = Passage(" ".join(words[:mid]).rstrip() + " ...", p.source, p.score, 0, True)
        n = count_tokens(format_passage(cand))
        if n <= room:
            best, lo = Passage(cand.text, cand.source, cand.score, n, True), mid + 1
        else:
            hi = mid - 1
    return best


def _token_counter(gate_model, embedder) -> Callable[[str], int]:
    tok = getattr(gate_model, "tokenizer", None)
    if tok is not None:
        return lambda text: len(tok.encode(text, add_special_tokens=False))
    return embedder.count_tokens  # no LM here: the embedder's WordPiece count approximates it


class AdaCompRetriever:
    def __init__(self, index_dir, embedder=None, gate_model=None, thresholds: dict | None = None,
                 budget_tokens: int = 384, top_k: int = 3, count_tokens: Callable[[str], int] | None = None,
                 candidates: int | None = None, embedder_backend: str = "auto"):
        """index_dir: an index built by `hola-ros index` (or `default_index_dir()`).
        embedder: None (the one the index was built with, else the default), a model path or an Embedder.
        embedder_backend: auto / torch / onnxruntime, for an embedder given by path (see embedder.py).
        gate_model: an object with `.model` (transformers causal LM) and `.tokenizer`, e.g. a
          `hola_ros.core.models.LoadedModel`; None: the auto gate uses similarity evidence only.
        thresholds: a dict (merged over the defaults); None: the packaged calibrated file if any.
        count_tokens: counts context tokens; default: gate_model's tokenizer, else the embedder's.
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
                                            backend=embedder_backend)
        if self.embedder.name != em["name"] or self.embedder.dim != em["dim"]:
            raise ValueError(f"index {index_dir} was built with {em['name']} (dim {em['dim']}), "
                             f"not {self.embedder.name} (dim {self.embedder.dim})")
        self.thresholds = load_thresholds() if thresholds is None else merge_thresholds(thresholds)
        self.gate = (ComplexityGate(gate_model.model, gate_model.tokenizer, self.thresholds)
                     if gate_model is not None else None)
        self.budget_tokens = budget_tokens
        self.top_k = top_k
        self.candidates = candidates or 2 * top_k
        self.count_tokens = count_tokens or _token_counter(gate_model, self.embedder)

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
        qvec = self.embedder.encode([query])
        t1 = time.perf_counter()
        hits = self.store.search(qvec, self.candidates)[0]
        t2 = time.perf_counter()
        sims = [h.score for h in hits]
        detail["similarity"] = {"top": sims[0], "scores": [round(s, 4) for s in sims[:self.top_k]],
                                "sources": [h.passage["source"] for h in hits[:self.top_k]]}
        timings = {"embed_ms": (t1 - t0) * 1e3, "search_ms": (t2 - t1) * 1e3}

        score = math.nan
        if mode != "auto":
            level, detail["gate"] = (1 if mode == "single" else 2), "forced"
        elif self.gate is not None:
            feats = self.gate.features(query, sims)
            score = self.gate.score(feats)
            level = level_for(score, self.thresholds)
            detail["gate"] = "lm+similarity"
            detail["features"] = {k: round(v, 5) if isinstance(v, float) else v for k, v in feats.items()}
            timings["gate_ms"] = (time.perf_counter() - t2) * 1e3
        else:
            level = int(sims[0] >= self.thresholds["sim_min"])
            detail["gate"] = "similarity-only"
        detail["thresholds"] = {k: self.thresholds[k] for k in ("delta1", "delta2", "sim_min", "sim_gap", "calibrated")}
        detail["timings"] = {k: round(v, 3) for k, v in timings.items()}

        passages = self._select(hits, budget) if level > 0 else []
        detail["k"] = len(passages)
        return RetrievalDecision(level, score, passages, sum(p.tokens for p in passages), 1, detail)

    def _select(self, hits, budget: int) -> list[Passage]:
        # k adapts to the evidence: passages far below the best match are dropped
        floor = hits[0].score - self.thresholds["sim_gap"]
        seen, chosen = set(), []
        for h in hits:
            text = h.passage["text"]
            if h.score < floor or text in seen:
                continue
            seen.add(text)
            chosen.append(Passage(text, h.passage["source"], h.score))
            if len(chosen) == self.top_k:
                break
        return fit_budget(chosen, budget, self.count_tokens)


def gather_context(question: str, mode: str,
                   retrieve: Callable[[str, str, int | None], RetrievalDecision],
                   follow_up: Callable[[str, list[Passage]], str] | None,
                   budget_tokens: int | None = None) -> RetrievalDecision:
    """Run the retrieval for one request; at level 2, a follow-up query and a second retrieval.

    retrieve(query, mode, budget) may be in-process (`AdaCompRetriever.retrieve`) or a ROS
    client; follow_up(question, passages) returns a search query written by the target model.
    The first step keeps at most half the budget so the second one has room; the merged list is
    de-duplicated and re-fitted to the budget using each passage's token count.
    """
    first = retrieve(question, mode, budget_tokens)
    if first.level < 2:
        return first
    budget = int(first.detail.get("budget_tokens", budget_tokens or 0)) or sum(p.tokens for p in first.passages)
    detail = dict(first.detail)
    query2 = follow_up(question, first.passages) if follow_up is not None else ""
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
    merged, seen, used = [], set(), 0
    for p in kept + second.passages:
        if p.text in seen or used + p.tokens > budget:
            continue
        seen.add(p.text)
        merged.append(p)
        used += p.tokens
    detail["follow_up"] = {"query": query2, "detail": second.detail}
    return RetrievalDecision(2, first.score, merged, used, first.retrievals + second.retrievals, detail)


__all__ = ["AdaCompRetriever", "RetrievalDecision", "Passage", "gather_context", "compose_messages",
           "default_index_dir", "follow_up_messages", "lm_follow_up", "fit_budget", "MODES"]
