"""Lexical side of the hybrid retrieval: BM25 (the `bm25s` library) over identifier-aware terms.

Dense MiniLM similarity is weak on identifiers (E-214, CD-5, AP-3, T2-BW-0003): it sees them as
a few sub-word pieces. Here an identifier is one term (`e-214`), and its parts are terms too
(`e`, `214`), so "E-214", "e214" and "error 214" meet. Terms are lower-cased, English function
and question words are dropped, and words are stemmed with the Snowball English stemmer
(`PyStemmer`: switched -> switch, docks -> dock). BM25 scores come from `bm25s` (Lucene variant,
k1 1.5, b 0.75); the index is saved beside the FAISS index.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

TOKENIZER = "terms-2-snowball"  # recorded in the manifest: the saved BM25 index depends on it
K1, B = 1.5, 0.75
SAME_WORD_PREFIX = 5  # a query word this long also finds the words that extend it (weigh -> weight) ...
EXTENSION_LETTERS = 2  # ... by at most this many letters (a suffix, not another word: stand -/-> standard)
_IDENTIFIER = re.compile(r"[a-z0-9]+(?:[-_/.][a-z0-9]+)+")
_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset("""
a an and are as at be but by for if in into is it no not of on or such that the their then there these they
this to was will with what which who whom whose when where why how do does did doing done should would could can
may might must shall i me my we our you your he she him her its them am been being have has had having from
than too very s t just so any some all each about up down out over under again further once here only own same
both few more most other nor off while until against between through during before after above below per
tell please need want know many much""".split())


_stemmer = None


def _stem_words(words: list[str]) -> list[str]:
    global _stemmer
    if _stemmer is None:
        import Stemmer

        _stemmer = Stemmer.Stemmer("english")
    return _stemmer.stemWords(words)


def terms(text: str) -> list[str]:
    """Index / query terms of `text`, in order (identifiers, then their parts where they stand)."""
    text = text.lower()
    out = []
    pos = 0
    for m in _IDENTIFIER.finditer(text):
        out += _words(text[pos:m.start()])
        ident = m.group(0).strip(".")
        out.append(ident)
        out += [p for p in _WORD.findall(ident) if p not in _STOPWORDS]
        out.append("".join(_WORD.findall(ident)))  # "e-214" is also "e214"
        pos = m.end()
    return out + _words(text[pos:])


def _words(text: str) -> list[str]:
    return _stem_words([w for w in _WORD.findall(text) if w not in _STOPWORDS])


def concepts(text: str) -> list[str]:
    """Distinct terms of a query as a reader counts them: an identifier once (not its parts)."""
    text = text.lower()
    out, pos = [], 0
    for m in _IDENTIFIER.finditer(text):
        out += _words(text[pos:m.start()]) + [m.group(0).strip(".")]
        pos = m.end()
    return list(dict.fromkeys(out + _words(text[pos:])))


QUESTION_WORDS = ("what", "when", "where", "which", "who", "whom", "whose", "why", "how")
_ASKS = (r"(?:(?:at|in|on|for|from|to|after|before|by|with|under)\s+)?"
         rf"(?:{'|'.join(QUESTION_WORDS)}|is|are|does|do|did|can|could|may|must|should|will)\b")
# a second question joined to the first: "..., and how ...", "... and at what ...", "...; is ..."
_SECOND_CLAUSE = re.compile(rf"\s*(?:,\s*and|\band|;)\s+(?={_ASKS})", re.IGNORECASE)


def question_parts(question: str) -> list[str]:
    """The questions a question joins ("When is a battery replaced, and how much does it weigh?" ->
    "When is a battery replaced?", "how much does it weigh?"); one part when it asks one thing."""
    parts = [p.strip().rstrip("?").strip() for p in _SECOND_CLAUSE.split(question)]
    parts = [p for p in parts if p]
    return [f"{p}?" for p in parts] if len(parts) > 1 else [question]


# a later part that points back ("how much does it weigh?") is searched with the first part's words
_REFERS_BACK = re.compile(r"\b(?:it|its|they|them|their|there|that|this|those|these)\b", re.IGNORECASE)


def part_queries(parts: list[str]) -> list[str]:
    """Search queries for a question's parts: a part whose pronoun stands for something the first
    part names ("... Zone C aisles, and what is the speed limit in them?") carries the first part."""
    return [p if i == 0 or not _REFERS_BACK.search(p) else f"{p} {parts[0]}" for i, p in enumerate(parts)]


# words that ask for a quantity ("how far", "how often", "how long") or only relate terms: no document
# states them, so a question using them is no less covered by the documents
ASKING_WORDS = frozenset({"far", "often", "long", "soon", "without", "within"})


def shared_phrases(query: str, texts: list[str]) -> int:
    """How many two-term phrases of the query ("access point", "zone c") occur in one of `texts`."""
    words = concepts(query)
    wanted = {(a, b) for a, b in zip(words, words[1:])}
    found = set()
    for text in texts:
        t = terms(text)
        found |= wanted & set(zip(t, t[1:]))
    return len(found)


def identifiers(text: str) -> list[str]:
    """The identifier-like terms of a text (letters and digits joined by - _ / .), e.g. e-214, cd-5."""
    return [m.group(0).strip(".") for m in _IDENTIFIER.finditer(text.lower())
            if any(c.isdigit() for c in m.group(0)) and any(c.isalpha() for c in m.group(0))]


class LexicalIndex:
    """BM25 over `terms`; `search` returns (passage id, score) pairs, best first, scores > 0 only."""

    def __init__(self, bm25, count: int):
        self.bm25 = bm25
        self.count = count
        self._doc_freq = None  # passages per term, from the BM25 matrix's column pointers
        self._by_prefix = None  # first SAME_WORD_PREFIX letters -> the index's words that begin with them

    @classmethod
    def build(cls, texts: list[str]) -> "LexicalIndex":
        import bm25s

        bm25 = bm25s.BM25(k1=K1, b=B)
        if texts:
            bm25.index([terms(t) or [""] for t in texts], show_progress=False)
        return cls(bm25, len(texts))

    def save(self, directory: Path) -> None:
        self.bm25.save(str(directory), show_progress=False)

    @classmethod
    def load(cls, directory: Path, count: int) -> "LexicalIndex":
        import bm25s

        return cls(bm25s.BM25.load(str(directory), show_progress=False, mmap=False), count)

    def known(self, query_terms: list[str]) -> list[str]:
        vocab = self.bm25.vocab_dict or {}
        return [t for t in dict.fromkeys(query_terms) if t in vocab]

    def expand(self, query_terms: list[str]) -> list[str]:
        """The query's terms and, for a word the index does not hold, the index's words that extend
        it by a suffix (stems of one word that the stemmer keeps apart: "weigh" finds "Weight");
        terms shorter than SAME_WORD_PREFIX letters, identifiers and numbers are matched exactly."""
        if self._by_prefix is None:
            self._by_prefix = {}
            for term in self.bm25.vocab_dict or {}:
                if len(term) >= SAME_WORD_PREFIX and term.isalpha():
                    self._by_prefix.setdefault(term[:SAME_WORD_PREFIX], []).append(term)
        out, vocab = list(query_terms), self.bm25.vocab_dict or {}
        for t in query_terms:
            if len(t) >= SAME_WORD_PREFIX and t.isalpha() and t not in vocab:
                out += [v for v in self._by_prefix.get(t[:SAME_WORD_PREFIX], [])
                        if v.startswith(t) and len(v) - len(t) <= EXTENSION_LETTERS]
        return list(dict.fromkeys(out))

    def doc_share(self, term: str) -> float:
        """Share of the passages that contain `term` (0 for an unknown term)."""
        t = (self.bm25.vocab_dict or {}).get(term)
        if t is None or self.count == 0:
            return 0.0
        if self._doc_freq is None:
            self._doc_freq = np.diff(np.asarray(self.bm25.scores["indptr"]))
        return float(self._doc_freq[t]) / self.count

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        found = self.known(self.expand(terms(query)))
        if not found or self.count == 0:
            return []
        scores = np.asarray(self.bm25.get_scores(found), dtype=np.float32)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(i), float(scores[i])) for i in top if scores[i] > 0]
