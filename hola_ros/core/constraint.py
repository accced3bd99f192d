"""Constrained decoding: a JSON Schema, a Lark grammar (GBNF is converted to Lark) or a regular
expression decides which tokens the target may emit next, so the output always parses.

The library is llguidance (Rust, no Python dependencies, no torch): its tokenizer is built from
the model's own tokenizer.json (the `tokenizers` library the serving processes already use), and
its matcher gives a token mask per step, checks a token list and rolls back, which is what
speculative decoding needs. xgrammar imports torch and transformers (+318 MB RSS measured) and
outlines-core has no context-free grammars; docs/constraints.md has the measurements.

Lossless with HSD: `mask` gives every verification row the mask of the state after the draft tokens
before it, exactly the mask plain decoding applies at that position, and `cut` drops a draft from
its first token the grammar refuses (such a token could never be accepted). Greedy constrained HSD
therefore equals greedy constrained AR token for token (test_constraint checks it on the real model).
"""
from __future__ import annotations

import json
import threading
import weakref

import numpy as np

from hola_ros.core.memory import trim_heap

KINDS = ("json_schema", "lark", "gbnf", "regex")
# JSON on one line with the usual separators: with free whitespace the 0.5B, held back from closing an
# object that still lacks a required key, wrote spaces until the token limit
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_tokenizers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_tokenizers_lock = threading.Lock()


class ConstraintError(ValueError):
    """A schema or grammar that cannot be used (the message says why)."""


def _backend_json(tokenizer) -> str:
    """tokenizer.json of a ChatTokenizer or a transformers fast tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConstraintError(f"{type(tokenizer).__name__} has no tokenizers backend: constraints need a fast tokenizer")
    return backend.to_str()


def ll_tokenizer(model):
    """The llguidance tokenizer of `model` (models.LoadedModel), built once per tokenizer and sized to
    the model's rows, with the model's EOS tokens. For Qwen's 151k vocabulary: 1-4 s and +99 MB RSS
    (most of it the default "slices", precomputed token sets that made masks inside a free-text
    JSON string 6.6x faster: 0.11 against 0.75 ms per token, measured on the shared machine)."""
    import llguidance

    with _tokenizers_lock:
        found = _tokenizers.get(model.tokenizer)
        if found is None:
            found = llguidance.LLTokenizer(_backend_json(model.tokenizer), n_vocab=int(model.vocab_size),
                                           eos_token=sorted(model.eos_token_ids))
            trim_heap()  # the tokenizer.json text and its parse leave freed heap behind
            _tokenizers[model.tokenizer] = found
        return found


def grammar_text(kind: str, source) -> str:
    """llguidance's grammar for `source` of `kind` (json_schema: a dict or its JSON text)."""
    from llguidance import LLMatcher
    from llguidance.gbnf_to_lark import gbnf_to_lark

    if kind == "json_schema":
        schema = json.loads(source) if isinstance(source, str) else source
        if not isinstance(schema, dict):
            raise ConstraintError("json_schema must be a JSON object")
        return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT)
    if kind == "lark":
        return LLMatcher.grammar_from_lark(source)
    if kind == "gbnf":
        try:
            return LLMatcher.grammar_from_lark(gbnf_to_lark(source))
        except Exception as exc:
            raise ConstraintError(f"gbnf grammar: {exc}") from None
    if kind == "regex":
        return LLMatcher.grammar_from_regex(source)
    raise ConstraintError(f"unknown constraint kind {kind!r}: use one of {', '.join(KINDS)}")


class Constraint:
    """One request's grammar state over the tokens generation committed. generate() consults it:
    `cut` before a draft is verified, `mask` on the verification rows, `advance` with what was
    committed. Not thread-safe: one per request."""

    def __init__(self, model, kind: str, source):
        from llguidance import LLMatcher

        try:
            grammar = grammar_text(kind, source)
        except (ValueError, TypeError) as exc:
            raise ConstraintError(f"{kind}: {exc}") from None
        self.kind = kind
        tokenizer = ll_tokenizer(model)
        self._matcher = LLMatcher(tokenizer, grammar, log_level=0)
        if self._matcher.is_error():
            raise ConstraintError(f"{kind}: {self._matcher.get_error()}")
        self._words = (int(model.vocab_size) + 31) // 32
        self.mask_s = 0.0  # time spent computing masks
        self.masks = 0
        self.cut_tokens = 0  # draft tokens dropped because the grammar refused them

    def cut(self, draft: list[int]) -> list[int]:
        """The longest prefix of `draft` the grammar allows after the committed tokens."""
        if not draft:
            return draft
        n = self._matcher.validate_tokens(list(draft))
        self.cut_tokens += len(draft) - n
        return draft[:n]

    def mask(self, rows, draft: list[int]):
        """`rows` (one per draft token, plus the one after) with every token the grammar refuses at
        that position set to -inf. `draft` must be what `cut` left."""
        import time

        t0 = time.perf_counter()
        allowed = np.empty((len(rows), self._words), dtype=np.int32)
        # the draft is walked on a copy: after consuming a draft and rolling it back, the matcher once
        # refused a later token its own mask had allowed (SmolLM2 writing a tool call with HSD)
        matcher = self._matcher.deep_copy() if draft else self._matcher
        for i in range(len(rows)):
            _fill(matcher, allowed[i])
            if i < len(draft) and not matcher.consume_token(int(draft[i])):
                raise ConstraintError(f"draft token {draft[i]} refused after cut: {matcher.get_error()}")
        bits = np.unpackbits(allowed.view(np.uint8), axis=1, bitorder="little")[:, :rows.shape[1]].astype(bool)
        masked = np.where(bits, rows, -np.inf).astype(rows.dtype, copy=False)
        self.mask_s += time.perf_counter() - t0
        self.masks += len(rows)
        return masked

    def advance(self, tokens: list[int]) -> None:
        """Commit generated tokens (an EOS the grammar allowed included)."""
        for token in tokens:
            if not self._matcher.consume_token(int(token)):
                raise ConstraintError(f"token {token} refused: {self._matcher.get_error()}")

    @property
    def complete(self) -> bool:
        """The committed tokens form a whole sentence of the grammar."""
        return self._matcher.is_accepting() or self._matcher.is_stopped() and not self._matcher.is_error()

    def stats(self) -> dict:
        return {"kind": self.kind, "complete": self.complete, "masks": self.masks,
                "mask_s": round(self.mask_s, 6), "cut_draft_tokens": self.cut_tokens}


def _fill(matcher, target: np.ndarray) -> None:
    """The matcher's next-token mask written into `target` (one bit per token)."""
    matcher.unsafe_compute_mask_ptr(target.ctypes.data, target.nbytes)
    if matcher.is_error():
        raise ConstraintError(matcher.get_error())
