"""Draft levels below the verifier: L0 n-gram / prompt lookup, L1 a cheaper model that shares
the target's tokenizer. Implements protocol.Drafter with per-request state."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hola_ros.core.protocol import DraftProposal, DrafterUnavailable


class NgramIndex:
    """Prompt-lookup drafting over one token context (prompt + passages + output).

    Each n-gram (min_n..max_n) maps to the position right after its latest occurrence whose
    continuation is already known; a proposal copies the continuation of the longest suffix
    match and chains lookups when the copied run reaches the end of the context.
    """

    def __init__(self, max_n: int = 4, min_n: int = 1):
        if not 1 <= min_n <= max_n:
            raise ValueError("need 1 <= min_n <= max_n")
        self.max_n, self.min_n = max_n, min_n
        self.tokens: list[int] = []
        self.next_pos: dict[tuple[int, ...], int] = {}

    def extend(self, tokens: list[int]) -> None:
        for tok in tokens:
            end = len(self.tokens)  # the n-grams ending here get `tok` as known continuation
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self.next_pos[tuple(self.tokens[end - n:end])] = end
            self.tokens.append(tok)

    def _match(self, seq: list[int]) -> int | None:
        for n in range(min(self.max_n, len(seq)), self.min_n - 1, -1):
            pos = self.next_pos.get(tuple(seq[len(seq) - n:]))
            if pos is not None:
                return pos
        return None

    def propose(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            pos = self._match(self.tokens[-self.max_n:] + out)
            if pos is None:
                break
            run = self.tokens[pos:pos + k - len(out)]
            if not run:
                break
            out.extend(run)
        return out[:k]


class ModelDraftState:
    """One request's L1 cache: `cached` mirrors the tokens held by the session."""

    def __init__(self, session):
        self.session = session
        self.cached: list[int] = []

    def logits_after(self, context: list[int]):
        """Roll back to the longest common prefix with context, feed the rest, return the
        logits for the next position."""
        lcp = 0
        limit = min(len(self.cached), len(context) - 1)  # keep >= 1 token to feed for logits
        while lcp < limit and self.cached[lcp] == context[lcp]:
            lcp += 1
        self.session.rollback(lcp)
        del self.cached[lcp:]
        rows = self.session.forward(context[lcp:], last_only=True)
        self.cached.extend(context[lcp:])
        return rows[-1]

    def feed(self, tokens: list[int]):
        rows = self.session.forward(tokens)
        self.cached.extend(tokens)
        return rows


@dataclass
class _Request:
    ngram: NgramIndex | None
    model: ModelDraftState | None
    context: list[int] = field(default_factory=list)


class LocalDrafter:
    """L0 n-gram and/or L1 model drafting in this process (the drafter node wraps the same).

    Staged: L0 goes first and its copy is proposed when it finds a match; when it has nothing,
    L1 drafts alone. With `recheck` L1 also reads every L0 copy in one batched pass, cuts it at
    the first token it disagrees with (substituting its own) and extends it; that raised the
    accepted tokens per target pass but cost more L1 time than it saved on the dev CPU (see
    docs/hsd.md), so it is off by default. L1 stops early once its top probability falls below
    `min_confidence`, so uncertain drafts do not waste verifier rows.
    """

    def __init__(self, ngram: bool = True, model=None, max_ngram: int = 4, min_ngram: int = 1,
                 recheck: bool = False, min_confidence: float = 0.4):
        if not ngram and model is None:
            raise ValueError("LocalDrafter needs at least one level (ngram=True or a model)")
        self.use_ngram, self.model = ngram, model
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.recheck, self.min_confidence = recheck, min_confidence
        self.requests: dict[str, _Request] = {}

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(lv for lv, on in ((0, self.use_ngram), (1, self.model is not None)) if on)

    def open(self, request_id: str, prompt_ids: list[int]) -> None:
        self.close(request_id)
        ngram = NgramIndex(self.max_ngram, self.min_ngram) if self.use_ngram else None
        if ngram is not None:
            ngram.extend(prompt_ids)
        model = ModelDraftState(self.model.new_session()) if self.model is not None else None
        self.requests[request_id] = _Request(ngram=ngram, model=model, context=list(prompt_ids))

    def close(self, request_id: str) -> None:
        req = self.requests.pop(request_id, None)
        if req is not None and req.model is not None:
            req.model.session.close()

    def propose(self, request_id: str, accepted_delta: list[int], max_tokens: int) -> DraftProposal:
        t0 = time.perf_counter()
        req = self.requests.get(request_id)
        if req is None:
            raise DrafterUnavailable(f"unknown request {request_id!r}")
        req.context.extend(accepted_delta)
        if req.ngram is not None:
            req.ngram.extend(accepted_delta)
        tokens: list[int] = []
        levels: list[int] = []
        entropies: list[float] = []
        if max_tokens > 0:
            if req.ngram is not None:
                tokens = req.ngram.propose(max_tokens)
                levels = [0] * len(tokens)
                entropies = [float("nan")] * len(tokens)
            if req.model is not None and (not tokens or self.recheck):
                tokens, levels, entropies = self._model_stage(req, tokens, max_tokens)
        return DraftProposal(tokens=tokens, levels=levels, entropies=entropies, draft_s=time.perf_counter() - t0)

    def _model_stage(self, req: _Request, l0: list[int], k: int):
        from hola_ros.core.sampling import top_token

        st = req.model
        logits = st.logits_after(req.context)
        tokens: list[int] = []
        levels: list[int] = []
        entropies: list[float] = []
        if l0:
            rows = np.concatenate([logits[None], st.feed(l0)])
            guesses = rows.argmax(-1).tolist()
            for i, tok in enumerate(l0):
                if guesses[i] != tok:
                    break
                tokens.append(tok)
                levels.append(0)
                entropies.append(top_token(rows[i])[2])
            if len(tokens) < len(l0):  # L1 overrules L0 from here on
                st.session.rollback(st.session.length - (len(l0) - len(tokens)))
                del st.cached[len(st.cached) - (len(l0) - len(tokens)):]
            logits = rows[len(tokens)]
        while len(tokens) < k:
            tok, p_top, h = top_token(logits)
            tokens.append(tok)
            levels.append(1)
            entropies.append(h)
            if len(tokens) == k or p_top < self.min_confidence:
                break
            logits = st.feed([tok])[-1]
        return tokens, levels, entropies
