"""Conversations: a session id on a request keeps its earlier turns, so a follow-up ("and after
that?") is answered with them, and its KV state, so a turn prefills only its own new tokens.

The turns live here (bounded: `max_sessions` conversations, least recently used evicted, and
`max_tokens` per conversation, oldest turns dropped); the KV state lives in the verifier's one
kvcache.PromptCache under the session's key, so conversations and shared prompt prefixes share one
bound. A conversation evicted here is dropped there too. Reuse is exact (the cache's contract), and
an evicted or trimmed conversation only costs a fresh prefill.

Prompt layout of a turn: [system] + earlier turns + [user]. The system message stays the same
across the conversation (the request's system_prompt, else SESSION_SYSTEM), so the cached prefix
holds; the rules and documents a turn was composed with go at the head of its own user message.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

SESSION_SYSTEM = ("You are the assistant of the robots and the site they work in. Answer each question from the "
                  "documents given with it or earlier in the conversation.")


class SessionBusy(RuntimeError):
    """The conversation already has a request in flight (turns must come one after another)."""


@dataclass
class Conversation:
    session_id: str
    turns: list[dict] = field(default_factory=list)  # user / assistant messages, oldest first
    tokens: list[int] = field(default_factory=list)  # tokens each user+assistant pair adds, per pair
    system: str = ""
    busy: bool = False
    asked: str | None = None  # the user message of the turn in flight, as the model saw it (pipeline)
    last_turn: tuple[str, str] | None = None  # (user, assistant) of the turn in flight, once answered (pipeline)

    @property
    def cache_key(self) -> str:
        return f"session:{self.session_id}"

    def messages(self, turn: list[dict], system_prompt: str = "") -> list[dict]:
        """The prompt of a new turn after the earlier ones (see turn_messages)."""
        return turn_messages(turn, system_prompt or self.system or SESSION_SYSTEM, self.turns)


def turn_messages(turn: list[dict], system: str, history: list[dict] = ()) -> list[dict]:
    """[system] + history + the turn's user message: `turn` is what the pipeline composed ([system,
    user] or [user]); its own system content moves to the head of the user message."""
    head = [m["content"] for m in turn if m["role"] == "system"]
    user = [m["content"] for m in turn if m["role"] == "user"]
    return [{"role": "system", "content": system}, *history, {"role": "user", "content": "\n\n".join(head + user)}]


class Conversations:
    """At most `max_sessions` conversations of at most `max_tokens` tokens each. `on_evict(key)`:
    called with the cache key of a conversation that was dropped (free its KV state)."""

    def __init__(self, max_sessions: int = 16, max_tokens: int = 4096, on_evict=None, count_tokens=len):
        if max_sessions < 1 or max_tokens < 1:
            raise ValueError("conversations need max_sessions >= 1 and max_tokens >= 1")
        self.max_sessions, self.max_tokens, self.on_evict = max_sessions, max_tokens, on_evict
        self.count_tokens = count_tokens  # text -> tokens (the served model's tokenizer)
        self._sessions: OrderedDict[str, Conversation] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = self.trimmed_turns = 0

    def begin(self, session_id: str, system_prompt: str = "") -> Conversation:
        """The conversation for a new turn (created when new), marked busy until `end`."""
        dropped = []
        with self._lock:
            conv = self._sessions.get(session_id)
            if conv is None:
                conv = self._sessions[session_id] = Conversation(session_id, system=system_prompt)
                while len(self._sessions) > self.max_sessions:
                    _, old = self._sessions.popitem(last=False)
                    dropped.append(old)
            elif conv.busy:
                raise SessionBusy(f"session {session_id!r} already has a request in flight")
            self._sessions.move_to_end(session_id)
            conv.busy = True
            if system_prompt:
                conv.system = system_prompt
        self._dropped(dropped)
        return conv

    def end(self, conv: Conversation) -> None:
        """The turn is over; the pipeline's `last_turn` (a turn that was answered) joins the
        conversation. Oldest turns go when the conversation passes max_tokens."""
        turn, conv.last_turn = conv.last_turn, None
        tokens = sum(self.count_tokens(text) for text in turn) + 10 if turn else 0  # 10: the template's role tags
        with self._lock:
            conv.busy = False
            if turn is None:
                return
            conv.turns += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
            conv.tokens.append(tokens)
            while conv.tokens and sum(conv.tokens) > self.max_tokens:
                del conv.turns[:2], conv.tokens[0]
                self.trimmed_turns += 1

    def drop(self, session_id: str) -> bool:
        with self._lock:
            conv = self._sessions.pop(session_id, None)
        if conv is not None:
            self._dropped([conv])
        return conv is not None

    def _dropped(self, conversations: list[Conversation]) -> None:
        for conv in conversations:
            self.evicted += 1
            if self.on_evict is not None:
                self.on_evict(conv.cache_key)

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Conversation | None:
        return self._sessions.get(session_id)
