"""Hierarchical speculative decoding: drafters (L0 n-gram, L1 model) propose a block, the
target (L2) verifies it in one forward pass over its KV cache.

Invariant of the loop: the target cache holds prompt + output except the last committed token
(`last`), which is fed together with the next draft, so every forward returns exactly the rows
needed to judge each draft token plus the token after the block. Plain decoding ("ar") is the
same loop with empty drafts, which is why greedy HSD reproduces it token for token when the
model's rows are computed independently of the block size (models.LoadedModel.info
["row_invariant"]).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from hola_ros.core.detok import TextStream
from hola_ros.core.draft_policy import StepCost
from hola_ros.core.protocol import DraftProposal, TargetCost

STOP_REASONS = ("eos", "stop", "max_new_tokens", "cancelled")


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    mode: str = "hsd"  # "hsd" | "ar"
    # the paper's gate: draft tokens with entropy < tau are kept unchecked (lossy, flagged)
    entropy_gate_tau: float | None = None
    draft_len: int = 8  # the draft length when adaptive_draft is off
    draft_len_max: int = 16
    # the drafter's policy picks each block's levels and length from the target's measured costs
    # (draft_policy); False: ask for draft_len tokens every block
    adaptive_draft: bool = True
    levels: tuple[int, ...] = (0, 1)  # drafting levels whose tokens are used
    # benchmarks: EOS logits are masked (like transformers' min_new_tokens) so every system
    # produces the same max_new_tokens tokens
    ignore_eos: bool = False

    def validate(self) -> None:
        if self.mode not in ("hsd", "ar"):
            raise ValueError(f"mode must be 'hsd' or 'ar', not {self.mode!r}")
        if self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0")
        if not 1 <= self.draft_len <= self.draft_len_max:
            raise ValueError("need 1 <= draft_len <= draft_len_max")


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]  # new tokens only; EOS is not included
    stop_reason: str
    stats: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class _Counters:
    def __init__(self):
        self.proposed = {0: 0, 1: 0}
        self.accepted = {0: 0, 1: 0}
        self.level_s = {0: 0.0, 1: 0.0}
        self.blocks = 0  # verification steps (target forwards after the prefill)
        self.draft_s = 0.0
        self.verify_s = 0.0
        self.gated = 0  # tokens kept by the entropy gate that the target would have changed


def padded_curve(curve: dict, multiple: int) -> dict:
    """An engine's rows curve at every row count up to its largest, where calls are padded to a
    multiple of `multiple` rows: a count costs its padded call, so the drafter sees that the row an
    odd block would waste on padding can carry one more drafted token for nothing. It runs to twice
    the measured curve: a block of draft_len_max (16) tokens is 17 rows, and past its last point the
    drafter extrapolates, which across a padding plateau would price the extra rows at nothing."""
    if multiple <= 1 or not curve:
        return curve
    cost = StepCost(curve, 1.0)
    return {rows: round(cost.ratio(-(-rows // multiple) * multiple), 4) for rows in range(1, 2 * max(map(int, curve)) + 1)}


class _TargetClock:
    """The target's one-row step time, followed from every verification step (it moves with the
    context length and with other load on the CPU): what the drafter's policy weighs drafts against."""

    def __init__(self, target):
        info = getattr(target, "info", {})
        self.curve = padded_curve(info.get("verify_cost") or {}, int(info.get("row_multiple") or 1))
        self.cost = StepCost(self.curve, info.get("step_s") or 0.0) if self.curve and info.get("step_s") else None

    def target_cost(self, adaptive: bool) -> TargetCost | None:
        return TargetCost(self.cost.row_s, self.curve) if adaptive and self.cost is not None else None

    def observe(self, rows: int, seconds: float) -> None:
        if self.cost is not None:
            self.cost.observe(rows, seconds)

    @property
    def row_s(self) -> float | None:
        return self.cost.row_s if self.cost is not None else None


def generate(target, prompt_ids: list[int], config: GenerationConfig | None = None, drafter=None,
             request_id: str = "r0", on_block: Callable[[list[int], str], None] | None = None,
             should_stop: Callable[[], bool] | None = None, cache=None, cache_key: str | None = None,
             constraint=None) -> GenerationResult:
    """Generate from `target` (models.LoadedModel) after `prompt_ids`; see the module doc.
    `cache` (kvcache.PromptCache of this target): start from the longest prefix of the prompt it
    holds (the entry `cache_key` names, for a conversation) and hand the session back at the end.
    `constraint` (constraint.Constraint, fresh): only tokens its grammar allows are drafted and
    emitted; the target's rows are masked before verification, so greedy stays plain decoding's."""
    cfg = config or GenerationConfig()
    cfg.validate()
    prompt_ids, max_new, flags = _checked_prompt(target, prompt_ids, cfg, constraint)
    run = _Decoding(target, cfg, _drafter_for(cfg, drafter), request_id, constraint, flags)
    session, reused = cache.session_for(prompt_ids, cache_key) if cache is not None else (target.new_session(), 0)
    finished = False  # only a session the loop left consistent goes back to the cache
    try:
        if len(prompt_ids) - 1 > reused:
            session.forward(prompt_ids[reused:-1], last_only=True)
        run.prefill_s = time.perf_counter() - run.t_start
        run.open_drafter(prompt_ids)
        run.decode(session, prompt_ids[-1], max_new, on_block, should_stop)
        finished = True
    finally:
        if cache is None or not finished:
            session.close()
        else:
            cache.keep(session, prompt_ids + run.committed, cache_key)
        run.close_drafter()
    return GenerationResult(text=run.stream.text, token_ids=run.out, stop_reason=run.stop_reason,
                            stats=run.stats(len(prompt_ids), reused))


def _checked_prompt(target, prompt_ids, cfg: GenerationConfig, constraint) -> tuple[list[int], int, list[str]]:
    """The prompt as ints, the new-token budget the context leaves, and the flags that says so."""
    prompt_ids = [int(t) for t in prompt_ids]
    if not prompt_ids:
        raise ValueError("prompt_ids is empty")
    if len(prompt_ids) >= target.context_length:
        raise ValueError(f"prompt has {len(prompt_ids)} tokens; the context holds {target.context_length}")
    if constraint is not None and cfg.stop:
        raise ValueError("stop strings cannot be combined with a constraint: the grammar decides where the output ends")
    flags: list[str] = []
    max_new = cfg.max_new_tokens
    if len(prompt_ids) + max_new > target.context_length:
        max_new = target.context_length - len(prompt_ids)
        flags.append("max_new_tokens_clipped_to_context")
    return prompt_ids, max_new, flags


def _drafter_for(cfg: GenerationConfig, drafter):
    if cfg.mode == "ar":
        return None
    if drafter is None:
        from hola_ros.core.drafters import LocalDrafter

        return LocalDrafter(ngram=True)
    return drafter


class _Decoding:
    """One request's decoding state: the drafter, the verified output, its text stream and counters.
    `decode` is the loop; the rest are its steps."""

    def __init__(self, target, cfg: GenerationConfig, drafter, request_id: str, constraint, flags: list[str]):
        self.target, self.cfg, self.drafter, self.request_id = target, cfg, drafter, request_id
        self.constraint, self.flags = constraint, flags
        self.greedy = cfg.temperature == 0.0
        seed = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(7), "little")
        self.gen = np.random.default_rng(seed)
        self.lossy = cfg.mode == "hsd" and cfg.entropy_gate_tau is not None
        if self.lossy:
            flags.append("entropy_gate")
        self.ask = cfg.draft_len_max if cfg.adaptive_draft else cfg.draft_len
        self.c = _Counters()
        self.clock = _TargetClock(target)
        self.degraded = False
        self.opened = None  # the drafter to close, even after it failed
        self.out: list[int] = []
        self.committed: list[int] = []  # every token the loop committed, EOS included: what the cache can hold
        self.stream = TextStream(target.tokenizer, cfg.stop)
        self.stop_reason = "max_new_tokens"
        self.first_token_s: float | None = None
        self.prefill_s = 0.0
        self.t_start = time.perf_counter()

    def open_drafter(self, prompt_ids: list[int]) -> None:
        self.opened = self.drafter
        if self.drafter is not None:
            try:
                self.drafter.open(self.request_id, prompt_ids, self.clock.target_cost(self.cfg.adaptive_draft))
            except Exception as exc:  # a missing drafter means plain decoding, never a failure
                self._lose_drafter(exc)

    def _lose_drafter(self, exc: Exception) -> None:
        self.drafter, self.degraded = None, True
        self.flags.append(f"drafter_unavailable: {type(exc).__name__}: {exc}")

    def close_drafter(self) -> None:
        if self.opened is not None:
            try:
                self.opened.close(self.request_id)
            except Exception:
                self.flags.append("drafter_close_failed")

    def decode(self, session, last: int, max_new: int, on_block, should_stop) -> None:
        """Draft a block, verify it in one target pass, commit what the target accepts; repeat."""
        delta: list[int] = []  # committed tokens the drafter has not been told of
        while len(self.out) < max_new:
            if should_stop is not None and should_stop():
                self.stop_reason = "cancelled"
                break
            # an empty cache means this forward is a prefill-shaped call: keep it one row, like AR
            want = min(self.ask, max_new - len(self.out) - 1) if session.length > 0 else 0
            draft, levels, ents, delta = self.propose(want, delta)
            accepted, nxt = self.verify(session, last, draft, levels, ents)
            if self.commit(draft[:accepted] + [nxt], on_block):
                break
            last, delta = nxt, delta + draft[:accepted] + [nxt]
        tail = self.stream.flush()
        if tail and on_block is not None:
            on_block([], tail)

    def propose(self, want: int, delta: list[int]):
        """The drafter's next block (none without a drafter), cut to what the constraint allows:
        (tokens, levels, entropies, the delta still to send)."""
        draft: list[int] = []
        levels: list[int] = []
        ents: list[float] = []
        if self.drafter is not None and want > 0:
            t0 = time.perf_counter()
            try:
                prop = self.drafter.propose(self.request_id, delta, want, self.clock.row_s)
                delta = []
                draft, levels, ents = _usable(prop, want, self.cfg.levels, self.target.vocab_size)
                for lv, seconds in enumerate(prop.level_s[:2]):
                    self.c.level_s[lv] += seconds
            except Exception as exc:
                self._lose_drafter(exc)
            self.c.draft_s += time.perf_counter() - t0
        if self.constraint is not None:
            draft = self.constraint.cut(draft)
            levels, ents = levels[:len(draft)], ents[:len(draft)]
        return draft, levels, ents, delta

    def verify(self, session, last: int, draft: list[int], levels: list[int], ents: list[float]) -> tuple[int, int]:
        """One target pass over `last` + draft: (accepted draft tokens, the token after them); the
        cache keeps what was accepted."""
        t0 = time.perf_counter()
        rows = session.forward([last] + draft)
        self.clock.observe(1 + len(draft), time.perf_counter() - t0)
        if self.cfg.ignore_eos and self.target.eos_token_ids:
            rows = np.array(rows)  # the engine's buffer may be read-only
            rows[:, sorted(self.target.eos_token_ids)] = -np.inf
        if self.constraint is not None:
            rows = self.constraint.mask(rows, draft)
        accepted, nxt, gated = _verify(rows, draft, ents, self.cfg, self.greedy, self.gen)
        if self.constraint is not None:
            self.constraint.advance(draft[:accepted] + [nxt])
        session.rollback(session.length - len(draft) + accepted)
        c = self.c
        c.verify_s += time.perf_counter() - t0
        c.blocks += 1
        c.gated += gated
        for lv in levels:
            c.proposed[lv] += 1
        for lv in levels[:accepted]:
            c.accepted[lv] += 1
        return accepted, nxt

    def commit(self, block: list[int], on_block) -> bool:
        """Emit a verified block up to EOS or a stop string; True when the answer ends there."""
        self.committed.extend(block)
        eos_at = next((i for i, t in enumerate(block) if t in self.target.eos_token_ids), None)
        if eos_at is not None:
            block, self.stop_reason = block[:eos_at], "eos"
        text_delta, stop_n = self.stream.push(block)
        if stop_n is not None:
            block, self.stop_reason = block[:stop_n], "stop"
        self.out.extend(block)
        if self.first_token_s is None and block:
            self.first_token_s = time.perf_counter() - self.t_start
        if on_block is not None and (block or text_delta):
            on_block(block, text_delta)
        return self.stop_reason in ("eos", "stop")

    def stats(self, prompt_tokens: int, reused: int) -> dict:
        total_s = time.perf_counter() - self.t_start
        c, flags, out, prefill_s = self.c, self.flags, self.out, self.prefill_s
        if self.degraded:
            flags.append("drafter_unavailable")
        proposed = sum(c.proposed.values())
        accepted_all = sum(c.accepted.values())
        row_invariant = bool(getattr(self.target, "info", {}).get("row_invariant", False))
        if not row_invariant and proposed:
            flags.append("not_row_invariant")
        stats = {
            "mode": self.cfg.mode,
            "prompt_tokens": prompt_tokens,
            "reused_prompt_tokens": reused,
            "new_tokens": len(out),
            "prefill_s": round(prefill_s, 6),
            "draft_s": round(c.draft_s, 6),
            "verify_s": round(c.verify_s, 6),
            "decode_s": round(total_s - prefill_s, 6),
            "first_token_s": round(self.first_token_s if self.first_token_s is not None else total_s, 6),
            "total_s": round(total_s, 6),
            "tokens_per_s": round(len(out) / total_s, 3) if total_s > 0 else 0.0,
            "decode_tokens_per_s": round(len(out) / (total_s - prefill_s), 3) if total_s > prefill_s else 0.0,
            "acceptance_rate": round(accepted_all / proposed, 4) if proposed else 0.0,
            "acceptance_per_level": {f"L{lv}": (round(c.accepted[lv] / c.proposed[lv], 4) if c.proposed[lv] else None)
                                     for lv in (0, 1)},
            "proposed_per_level": {f"L{lv}": c.proposed[lv] for lv in (0, 1)},
            "accepted_per_level": {f"L{lv}": c.accepted[lv] for lv in (0, 1)},
            "level_s": {f"L{lv}": round(c.level_s[lv], 6) for lv in (0, 1)},
            "mean_accepted_block": round(len(out) / c.blocks, 4) if c.blocks else 0.0,
            "target_forwards": c.blocks + (1 if prompt_tokens > 1 else 0),
            "lossy": self.lossy,
            "gate_overrides": c.gated,
            "degraded": self.degraded,
            "row_invariant": row_invariant,
            # drafted tokens change nothing only if verified rows equal one-token steps bitwise
            "exact": not self.lossy and (row_invariant or proposed == 0),
            "sampling": "greedy" if self.greedy else "rejection",
            "flags": flags,
        }
        if self.constraint is not None:
            stats["constraint"] = self.constraint.stats()
            if not self.constraint.complete:
                flags.append("constraint_incomplete")
        return stats


def _usable(prop: DraftProposal, want: int, levels_on, vocab: int):
    """The proposal's usable prefix: at most `want` tokens, enabled levels, valid ids."""
    n = 0
    toks = list(prop.tokens)[:want]
    lvls = list(prop.levels) + [0] * (len(toks) - len(prop.levels))
    ents = list(prop.entropies) + [math.nan] * (len(toks) - len(prop.entropies))
    while n < len(toks) and lvls[n] in levels_on and 0 <= int(toks[n]) < vocab:
        n += 1
    return [int(t) for t in toks[:n]], [int(lv) for lv in lvls[:n]], [float(e) for e in ents[:n]]


def _verify(rows, draft: list[int], ents: list[float], cfg: GenerationConfig, greedy: bool, gen):
    """Return (accepted draft tokens, the token after them, gate overrides)."""
    from hola_ros.core.sampling import accept_point_draft, sample, target_probs

    tau = cfg.entropy_gate_tau if cfg.mode == "hsd" else None
    gated = 0
    if greedy:
        best = rows.argmax(-1).tolist()
        for i, tok in enumerate(draft):
            if tok != best[i]:
                if tau is not None and ents[i] < tau:  # NaN (unknown entropy) never passes
                    gated += 1
                    continue
                return i, best[i], gated
        return len(draft), best[len(draft)], gated
    probs = target_probs(rows, cfg.temperature, cfg.top_k, cfg.top_p)
    for i, tok in enumerate(draft):
        if tau is not None and ents[i] < tau:
            gated += 1
            continue
        ok, emitted = accept_point_draft(probs[i], tok, gen)
        if not ok:
            return i, emitted, gated
    return len(draft), sample(probs[len(draft)], gen), gated
