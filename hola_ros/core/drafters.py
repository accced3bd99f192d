"""Draft levels below the verifier: L0 n-gram / prompt lookup, L1 a cheaper model that shares
the target's tokenizer. Implements protocol.Drafter with per-request state."""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

import numpy as np

from hola_ros.core.draft_policy import DraftPolicy, StepCost
from hola_ros.core.kvcache import common_prefix
from hola_ros.core.protocol import DraftProposal, DrafterUnavailable, TargetCost
from hola_ros.core.sampling import top_token


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
            for n in range(self.min_n, min(self.max_n, end) + 1) if tok != BOUNDARY else ():
                self.next_pos[tuple(self.tokens[end - n:end])] = end
            self.tokens.append(tok)

    def _match(self, seq: list[int]) -> tuple[int | None, int]:
        """(continuation position, n-gram order) of the longest suffix of seq seen before."""
        for n in range(min(self.max_n, len(seq)), self.min_n - 1, -1):
            pos = self.next_pos.get(tuple(seq[len(seq) - n:]))
            if pos is not None:
                return pos, n
        return None, 0

    def run(self, pos: int, n: int) -> list[int]:
        """Up to n known tokens from `pos`, stopping at an answer boundary (AnswerHistory)."""
        run = self.tokens[pos:pos + n]
        return run[:run.index(BOUNDARY)] if BOUNDARY in run else run

    def propose(self, k: int, history: AnswerHistory | None = None) -> tuple[list[int], list[int]]:
        """Up to k copied tokens, and the order of the n-gram match each one was copied after:
        negative where the copy came from `history`, which is consulted only where this context has no
        match of history's shortest order (this request's own prompt and passages come first)."""
        out: list[int] = []
        orders: list[int] = []
        while len(out) < k:
            seq = self.tokens[-self.max_n:] + out
            pos, order = self._match(seq)
            source = self
            if history is not None and order < history.min_n:
                hpos, horder = history.index._match(seq)
                if horder > order:
                    source, pos, order = history.index, hpos, -horder
            run = source.run(pos, k - len(out)) if pos is not None else []
            if not run:
                break
            out.extend(run)
            orders.extend([order] * len(run))
        return out[:k], orders[:k]


BOUNDARY = -1  # between two answers in AnswerHistory: no copy runs across it


class AnswerHistory:
    """Level 0's memory of earlier answers: the n-grams of what this process's requests committed, so
    a phrase the model wrote before ("we need to", a unit, a file name, an answer's closing line) is
    drafted again in a later answer, as llama.cpp's lookup decoding does with its dynamic n-gram cache.
    Bounded: past `max_tokens`, the older half of the answers is forgotten."""

    def __init__(self, max_tokens: int = 20000, max_n: int = 4, min_n: int = 2):
        self.max_tokens, self.max_n, self.min_n = max_tokens, max_n, min_n
        self.answers: collections.deque[list[int]] = collections.deque()
        self.held = 0
        self.index = NgramIndex(max_n, min_n)

    def clear(self) -> None:
        self.answers.clear()
        self.held = 0
        self.index = NgramIndex(self.max_n, self.min_n)

    def add(self, tokens: list[int]) -> None:
        if len(tokens) <= self.min_n or self.max_tokens <= 0:
            return
        tokens = list(tokens[-self.max_tokens:])
        if self.held + len(tokens) > self.max_tokens:
            kept, total = [], len(tokens)  # the newest answers within half the budget, with this one
            while self.answers and total + len(self.answers[-1]) <= self.max_tokens // 2:
                kept.insert(0, self.answers.pop())
                total += len(kept[0])
            self.clear()
            for answer in kept:
                self._keep(answer)
        self._keep(tokens)

    def _keep(self, tokens: list[int]) -> None:
        self.answers.append(tokens)
        self.held += len(tokens)
        self.index.extend(tokens + [BOUNDARY])


class ModelDraftState:
    """One request's L1 cache: `cached` mirrors the tokens held by the session."""

    def __init__(self, session):
        self.session = session
        self.cached: list[int] = []

    def unread(self, context: list[int]) -> int:
        """Tokens of `context` this state has not read (after the common prefix)."""
        return len(context) - common_prefix(self.cached, context)

    def read(self, context: list[int], extra: list[int] = ()) -> np.ndarray:
        """Roll back to the longest common prefix with `context`, then read the rest of it and
        `extra` in one call: the logits after the context and after each extra token."""
        extra = list(extra)
        lcp = min(common_prefix(self.cached, context), len(context) - 1)  # >= 1 token fed for logits
        self.session.rollback(lcp)
        del self.cached[lcp:]
        feed = context[lcp:] + extra
        rows = self.session.forward(feed, rows_from=len(feed) - len(extra) - 1)
        self.cached.extend(feed)
        return rows

    def feed(self, tokens: list[int]):
        rows = self.session.forward(tokens)
        self.cached.extend(tokens)
        return rows

    def drop(self, n: int) -> None:
        """Forget the last n tokens read."""
        if n:
            self.session.rollback(self.session.length - n)
            del self.cached[len(self.cached) - n:]


@dataclass
class _Request:
    ngram: NgramIndex | None
    model: ModelDraftState | None
    policy: DraftPolicy
    prompt_len: int = 0
    context: list[int] = field(default_factory=list)
    proposed: list[int] = field(default_factory=list)  # the last proposal, and each token's source
    sources: list[tuple] = field(default_factory=list)


class LocalDrafter:
    """L0 n-gram and/or L1 model drafting in this process (the drafter node wraps the same).

    Each block, draft_policy.DraftPolicy decides from measured costs and acceptance whether the
    level-0 copy (how much of it), level-1 drafting, or the cascade (level 1 checks the copy in one
    pass and drafts on from the prefix it agrees with) goes to the target, and when level 1 stops.
    It needs the target's step costs (`open(..., target=TargetCost)`, sent by the verifier); without
    them the staged rule applies: the whole copy, else level 1 until its confidence falls below
    `min_confidence`.
    """

    def __init__(self, ngram: bool = True, model=None, max_ngram: int = 4, min_ngram: int = 1,
                 min_confidence: float = 0.4, history_tokens: int = 20000):
        if not ngram and model is None:
            raise ValueError("LocalDrafter needs at least one level (ngram=True or a model)")
        self.use_ngram, self.model = ngram, model
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.history = AnswerHistory(history_tokens, max_ngram) if ngram and history_tokens > 0 else None
        self.min_confidence = min_confidence
        self.requests: dict[str, _Request] = {}

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(lv for lv, on in ((0, self.use_ngram), (1, self.model is not None)) if on)

    def open(self, request_id: str, prompt_ids: list[int], target: TargetCost | None = None) -> None:
        self.close(request_id)
        ngram = NgramIndex(self.max_ngram, self.min_ngram) if self.use_ngram else None
        if ngram is not None:
            ngram.extend(prompt_ids)
        model = ModelDraftState(self.model.new_session()) if self.model is not None else None
        self.requests[request_id] = _Request(ngram=ngram, model=model, context=list(prompt_ids),
                                             prompt_len=len(prompt_ids), policy=self._policy(target))

    def _policy(self, target: TargetCost | None) -> DraftPolicy:
        l1 = None
        if target is not None and self.model is not None:
            info = getattr(self.model, "info", {})
            l1 = StepCost(info.get("verify_cost") or {1: 1.0}, info.get("step_s") or target.row_s)
        return DraftPolicy(StepCost(target.curve, target.row_s) if target is not None else None, l1,
                           self.max_ngram, with_l1=self.model is not None)

    def close(self, request_id: str) -> None:
        req = self.requests.pop(request_id, None)
        if req is not None and self.history is not None:
            self.history.add(req.context[req.prompt_len:])
        if req is not None and req.model is not None:
            req.model.session.close()

    def propose(self, request_id: str, accepted_delta: list[int], max_tokens: int,
                target_row_s: float | None = None) -> DraftProposal:
        t0 = time.perf_counter()
        req = self.requests.get(request_id)
        if req is None:
            raise DrafterUnavailable(f"unknown request {request_id!r}")
        if req.proposed:  # what the target kept of the last proposal
            req.policy.observe(req.sources, common_prefix(req.proposed, accepted_delta))
        if target_row_s and req.policy.target is not None:
            req.policy.target.row_s = float(target_row_s)
        req.context.extend(accepted_delta)
        if req.ngram is not None:
            req.ngram.extend(accepted_delta)
        copy, orders = req.ngram.propose(max_tokens, self.history) if req.ngram is not None and max_tokens > 0 else ([], [])
        l0_s = time.perf_counter() - t0
        tokens, sources, entropies = [], [], []
        if max_tokens > 0:
            unread = req.model.unread(req.context) if req.model is not None else 0
            plan = req.policy.plan(orders, max_tokens, unread)
            if plan.level == "l0":
                tokens, sources = copy[:plan.l0_tokens], [("l0", n) for n in orders[:plan.l0_tokens]]
                entropies = [float("nan")] * len(tokens)
            elif plan.level in ("l1", "cascade") and req.model is not None:
                checked = plan.l0_tokens if plan.level == "cascade" else 0
                tokens, sources, entropies = self._model_stage(req, copy[:checked], orders[:checked], max_tokens,
                                                               plan.exploring)
        req.proposed, req.sources = tokens, sources
        total = time.perf_counter() - t0
        return DraftProposal(tokens=tokens, levels=[1 if kind == "l1" else 0 for kind, _ in sources],
                             entropies=entropies, draft_s=total, level_s=[l0_s, total - l0_s])

    def _model_stage(self, req: _Request, copy: list[int], orders: list[int], k: int, exploring: bool = False):
        """Level 1: check the level-0 `copy` (the cascade) and draft on, one token per step, while
        the policy expects the block's rate to rise; the best prefix is proposed."""
        st, policy = req.model, req.policy
        fed = max(st.unread(req.context), 1) + len(copy)  # read() feeds at least the last context token
        t0 = time.perf_counter()
        rows = st.read(req.context, copy)
        if policy.l1 is not None:
            policy.l1.observe(fed, time.perf_counter() - t0)
        agreed = _agreed(rows, copy)
        for i in range(min(agreed + 1, len(copy))):
            policy.agree.update(i < agreed)
        st.drop(len(copy) - agreed)
        tokens, sources = copy[:agreed], [("confirmed", n) for n in orders[:agreed]]
        entropies = [float("nan")] * agreed
        rates = [policy.confirmed.value] * agreed
        spent = [time.perf_counter() - t0] * agreed
        logits = rows[agreed]
        while len(tokens) < k:
            tok, p_top, h = top_token(logits)
            band = policy.band(p_top)
            tokens.append(tok), sources.append(("l1", band)), entropies.append(h)
            rates.append(policy.bands[band].value), spent.append(time.perf_counter() - t0)
            confident = p_top >= self.min_confidence if not policy.adaptive else True
            if len(tokens) == k or not confident or not policy.keep_drafting(rates, spent[-1]):
                break
            t1 = time.perf_counter()
            logits = st.feed([tok])[-1]
            if policy.l1 is not None:
                policy.l1.observe(1, time.perf_counter() - t1)
        keep = max(agreed, policy.l1_prefix(rates, spent, exploring))
        return tokens[:keep], sources[:keep], entropies[:keep]


def _agreed(rows, copy: list[int]) -> int:
    """How many tokens of `copy` the model's argmax rows agree with, from the first."""
    if not copy:
        return 0
    guesses = rows[:len(copy)].argmax(-1).tolist()
    return next((i for i, (g, t) in enumerate(zip(guesses, copy)) if g != t), len(copy))
