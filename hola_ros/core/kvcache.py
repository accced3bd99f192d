"""KV state kept across requests, so a request prefills only what it does not share with an earlier one.

Two uses share one mechanism:
- a prefix many requests begin with (the chat template's system turn with the grounding rules): the
  entry that shares the longest prefix with a new prompt is copied (`KVSession.fork`) and the copy is
  rolled back to the shared part, so the entry stays for the next request;
- a conversation: the entry named by its key (a session id) is taken, extended by the new turn and
  put back, so each turn prefills only its own new tokens.

Reuse is exact: the engines compute a row's keys and values independently of how many rows share a
call (engines.characterize checks it), so a reused prefix holds bitwise what a fresh prefill would
(test_engine checks logits bitwise with and without reuse). Bounded by entry count and total tokens,
least recently used first out.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

ANONYMOUS = "prefix-"  # entries kept for their shared prefix; the others are named by their caller
MIN_SHARED = 16  # a shared prefix shorter than this is not worth an entry or a copy


@dataclass
class _Entry:
    session: object  # models.KVSession
    tokens: list[int]  # what the session holds, token for token


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PromptCache:
    """Sessions of earlier prompts for one model, at most `max_entries` of them and `max_tokens`
    cached tokens in all. Thread-safe: every request takes its own session out."""

    def __init__(self, model, max_entries: int = 8, max_tokens: int = 4096):
        if max_entries < 1 or max_tokens < 1:
            raise ValueError("a prompt cache needs max_entries >= 1 and max_tokens >= 1")
        self.model, self.max_entries, self.max_tokens = model, max_entries, max_tokens
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._anonymous = 0
        self.hits = self.reused_tokens = 0

    def session_for(self, prompt_ids: list[int], key: str | None = None):
        """(session, reused tokens): a session holding the longest cached prefix of `prompt_ids`
        (at most all but its last token), the caller's to use and to hand back with `keep`. With a
        key, that key's entry is taken out (a conversation goes on); without, the best shared prefix
        is copied, and the entry is cut to that shared part (what distinct prompts have in common
        is what the next one will share)."""
        limit = len(prompt_ids) - 1
        with self._lock:
            if key is not None and key in self._entries:
                entry = self._entries.pop(key)
                shared = min(common_prefix(entry.tokens, prompt_ids), limit)
                entry.session.rollback(shared)
                return self._hit(entry.session, shared)
            name, shared = self._best(prompt_ids, limit)
            if name is None:
                return self.model.new_session(), 0
            entry = self._entries[name]
            self._entries.move_to_end(name)
            if shared < len(entry.tokens) and key is None and name.startswith(ANONYMOUS):  # a conversation's stays whole
                entry.session.rollback(shared)
                del entry.tokens[shared:]
                compact = entry.session.fork()  # sized to the shared part, not to the old request
                entry.session.close()
                entry.session = compact
            session = entry.session.fork()
        session.rollback(shared)
        return self._hit(session, shared)

    def _hit(self, session, shared: int):
        self.hits += bool(shared)
        self.reused_tokens += shared
        return session, shared

    def _best(self, prompt_ids: list[int], limit: int):
        best, best_len = None, MIN_SHARED - 1
        for name, entry in self._entries.items():
            n = min(common_prefix(entry.tokens, prompt_ids), limit)
            if n > best_len:
                best, best_len = name, n
        return best, (best_len if best is not None else 0)

    def keep(self, session, tokens: list[int], key: str | None = None) -> None:
        """Hand a session back once a request is done with it. `tokens`: what it holds. With a key
        it becomes that key's entry; without, it is kept only when no entry already holds a prefix
        of it worth sharing (and is closed otherwise)."""
        tokens = list(tokens[:session.length])
        with self._lock:
            if key is None:
                if len(tokens) < MIN_SHARED or self._best(tokens, len(tokens))[0] is not None:
                    session.close()
                    return
                self._anonymous += 1
                key = f"{ANONYMOUS}{self._anonymous}"
            old = self._entries.pop(key, None)
            if old is not None and old.session is not session:
                old.session.close()
            self._entries[key] = _Entry(session, tokens)
            self._evict()

    def drop(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is not None:
            entry.session.close()
        return entry is not None

    def _evict(self) -> None:
        while self._entries and (len(self._entries) > self.max_entries or self.cached_tokens() > self.max_tokens):
            _, entry = self._entries.popitem(last=False)
            entry.session.close()

    def cached_tokens(self) -> int:
        return sum(len(e.tokens) for e in self._entries.values())

    def clear(self) -> None:
        with self._lock:
            for entry in self._entries.values():
                entry.session.close()
            self._entries.clear()
