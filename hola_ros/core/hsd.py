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


class _TargetClock:
    """The target's one-row step time, followed from every verification step (it moves with the
    context length and with other load on the CPU): what the drafter's policy weighs drafts against."""

    def __init__(self, target):
        info = getattr(target, "info", {})
        self.curve = info.get("verify_cost") or {}
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
    prompt_ids = [int(t) for t in prompt_ids]
    if not prompt_ids:
        raise ValueError("prompt_ids is empty")
    if len(prompt_ids) >= target.context_length:
        raise ValueError(f"prompt has {len(prompt_ids)} tokens; the context holds {target.context_length}")
    flags: list[str] = []
    max_new = cfg.max_new_tokens
    if len(prompt_ids) + max_new > target.context_length:
        max_new = target.context_length - len(prompt_ids)
        flags.append("max_new_tokens_clipped_to_context")
    greedy = cfg.temperature == 0.0
    seed = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(7), "little")
    gen = np.random.default_rng(seed)
    lossy = cfg.mode == "hsd" and cfg.entropy_gate_tau is not None
    if lossy:
        flags.append("entropy_gate")
    if cfg.mode == "hsd" and drafter is None:
        from hola_ros.core.drafters import LocalDrafter

        drafter = LocalDrafter(ngram=True)
    if cfg.mode == "ar":
        drafter = None
    if constraint is not None and cfg.stop:
        raise ValueError("stop strings cannot be combined with a constraint: the grammar decides where the output ends")

    c = _Counters()
    degraded = False
    out: list[int] = []
    stream = TextStream(target.tokenizer, cfg.stop)
    stop_reason = "max_new_tokens"
    first_token_s = None
    t_start = time.perf_counter()
    opened = None  # the drafter to close, even after it failed
    session, reused = cache.session_for(prompt_ids, cache_key) if cache is not None else (target.new_session(), 0)
    committed: list[int] = []  # every token the loop committed, EOS included: what the cache can hold
    finished = False  # only a session the loop left consistent goes back to the cache
    try:
        if len(prompt_ids) - 1 > reused:
            session.forward(prompt_ids[reused:-1], last_only=True)
        prefill_s = time.perf_counter() - t_start
        opened = drafter
        clock = _TargetClock(target)
        if drafter is not None:
            try:
                drafter.open(request_id, prompt_ids, clock.target_cost(cfg.adaptive_draft))
            except Exception as exc:  # a missing drafter means plain decoding, never a failure
                drafter, degraded = None, True
                flags.append(f"drafter_unavailable: {type(exc).__name__}: {exc}")
        last = prompt_ids[-1]
        delta: list[int] = []
        ask = cfg.draft_len_max if cfg.adaptive_draft else cfg.draft_len
        while len(out) < max_new:
            if should_stop is not None and should_stop():
                stop_reason = "cancelled"
                break
            budget = max_new - len(out)
            draft: list[int] = []
            levels: list[int] = []
            ents: list[float] = []
            # an empty cache means this forward is a prefill-shaped call: keep it one row, like AR
            want = min(ask, budget - 1) if session.length > 0 else 0
            if drafter is not None and want > 0:
                t0 = time.perf_counter()
                try:
                    prop = drafter.propose(request_id, delta, want, clock.row_s)
                    delta = []
                    draft, levels, ents = _usable(prop, want, cfg.levels, target.vocab_size)
                    for lv, seconds in enumerate(prop.level_s[:2]):
                        c.level_s[lv] += seconds
                except Exception as exc:
                    drafter, degraded = None, True
                    flags.append(f"drafter_unavailable: {type(exc).__name__}: {exc}")
                c.draft_s += time.perf_counter() - t0
            if constraint is not None:
                draft = constraint.cut(draft)
                levels, ents = levels[:len(draft)], ents[:len(draft)]
            t0 = time.perf_counter()
            rows = session.forward([last] + draft)
            clock.observe(1 + len(draft), time.perf_counter() - t0)
            if cfg.ignore_eos and target.eos_token_ids:
                rows = np.array(rows)  # the engine's buffer may be read-only
                rows[:, sorted(target.eos_token_ids)] = -np.inf
            if constraint is not None:
                rows = constraint.mask(rows, draft)
            accepted, nxt, gated = _verify(rows, draft, ents, cfg, greedy, gen)
            if constraint is not None:
                constraint.advance(draft[:accepted] + [nxt])
            session.rollback(session.length - len(draft) + accepted)
            c.verify_s += time.perf_counter() - t0
            c.blocks += 1
            c.gated += gated
            for lv in levels:
                c.proposed[lv] += 1
            for lv in levels[:accepted]:
                c.accepted[lv] += 1

            block = draft[:accepted] + [nxt]
            committed.extend(block)
            eos_at = next((i for i, t in enumerate(block) if t in target.eos_token_ids), None)
            if eos_at is not None:
                block, stop_reason = block[:eos_at], "eos"
            text_delta, stop_n = stream.push(block)
            if stop_n is not None:
                block, stop_reason = block[:stop_n], "stop"
            out.extend(block)
            if first_token_s is None and block:
                first_token_s = time.perf_counter() - t_start
            if on_block is not None and (block or text_delta):
                on_block(block, text_delta)
            if stop_reason in ("eos", "stop"):
                break
            last, delta = nxt, delta + draft[:accepted] + [nxt]
        tail = stream.flush()
        if tail and on_block is not None:
            on_block([], tail)
        finished = True
    finally:
        if cache is None or not finished:
            session.close()
        else:
            cache.keep(session, prompt_ids + committed, cache_key)
        if opened is not None:
            try:
                opened.close(request_id)
            except Exception:
                flags.append("drafter_close_failed")
    total_s = time.perf_counter() - t_start
    if degraded:
        flags.append("drafter_unavailable")
    proposed = sum(c.proposed.values())
    accepted_all = sum(c.accepted.values())
    row_invariant = bool(getattr(target, "info", {}).get("row_invariant", False))
    if not row_invariant and proposed:
        flags.append("not_row_invariant")
    stats = {
        "mode": cfg.mode,
        "prompt_tokens": len(prompt_ids),
        "reused_prompt_tokens": reused,
        "new_tokens": len(out),
        "prefill_s": round(prefill_s, 6),
        "draft_s": round(c.draft_s, 6),
        "verify_s": round(c.verify_s, 6),
        "decode_s": round(total_s - prefill_s, 6),
        "first_token_s": round(first_token_s if first_token_s is not None else total_s, 6),
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
        "target_forwards": c.blocks + (1 if len(prompt_ids) > 1 else 0),
        "lossy": lossy,
        "gate_overrides": c.gated,
        "degraded": degraded,
        "row_invariant": row_invariant,
        # drafted tokens change nothing only if verified rows equal one-token steps bitwise
        "exact": not lossy and (row_invariant or proposed == 0),
        "sampling": "greedy" if greedy else "rejection",
        "flags": flags,
    }
    if constraint is not None:
        stats["constraint"] = constraint.stats()
        if not constraint.complete:
            flags.append("constraint_incomplete")
    return GenerationResult(text=stream.text, token_ids=out, stop_reason=stop_reason, stats=stats)


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
