"""Which drafting levels run, and how many tokens they draft, block by block, from measured costs and
acceptance.

A block of k drafted tokens commits 1 + (expected accepted tokens) for the time it takes to draft it
plus one target step of k + 1 rows. The policy estimates both and picks, each block, the option with
the most committed tokens per second:
- no draft (the target's own token);
- the first k tokens of the level-0 copy (free to draft): each token's acceptance is estimated by
  the length of the n-gram match it came from;
- level-1 drafting (the cheaper model, one step per token): worth it only when its expected gain
  beats the best level-0 option after paying for its own steps, including the catch-up of tokens it
  has not read yet; while drafting, it stops at the token where the expected rate stops rising,
  each token's acceptance estimated from the model's own confidence in it;
- the cascade: level 1 reads the level-0 copy in one batched pass, keeps the prefix it agrees with,
  and goes on drafting from there.

Costs: the target's and level 1's one-row step times (the verifier reports its measured one each
block) times each engine's measured rows curve (engines.characterize). Acceptance: decayed counts of
what the target accepted, per source (n-gram order, negative for a match in earlier answers; level-1
confidence band; level-1-confirmed copy). Without the target's costs (a drafter on an old verifier) the
plain staged rule applies: the whole copy, and level 1 only when level 0 has nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

L1_BANDS = (0.3, 0.5, 0.7, 0.9)  # level-1 confidence bands: [0, .3), [.3, .5), ..., [.9, 1]
EXPLORE_EVERY = 16  # steps level 1 may sit out before it drafts once anyway (its estimate stays fresh), when
# what it has not read yet costs it no more than a target step


class StepCost:
    """Seconds of one step of B rows on an engine: a measured one-row time times the engine's curve."""

    def __init__(self, curve: dict, row_s: float):
        self.points = sorted((int(b), float(c)) for b, c in curve.items()) or [(1, 1.0)]
        self.row_s = float(row_s)

    def ratio(self, rows: int) -> float:
        pts = self.points
        if rows <= pts[0][0] or len(pts) == 1:
            return pts[0][1] if rows <= pts[0][0] else pts[0][1] * rows / pts[0][0]
        for (b0, c0), (b1, c1) in zip(pts, pts[1:]):
            if rows <= b1:
                return c0 + (c1 - c0) * (rows - b0) / (b1 - b0)
        (b0, c0), (b1, c1) = pts[-2], pts[-1]
        return c1 + (c1 - c0) * (rows - b1) / (b1 - b0)  # beyond the curve: its last slope

    def seconds(self, rows: int) -> float:
        return self.row_s * self.ratio(rows)

    def observe(self, rows: int, seconds: float, weight: float = 0.3) -> None:
        """A measured step of `rows` rows: the one-row time follows it."""
        if rows > 0 and seconds > 0:
            self.row_s += weight * (seconds / self.ratio(rows) - self.row_s)


class Rate:
    """A decayed estimate of the probability that the target accepts a token of one source."""

    def __init__(self, prior: float, weight: float = 2.0, decay: float = 0.97):
        self.hits, self.total, self.decay = prior * weight, weight, decay

    @property
    def value(self) -> float:
        return self.hits / self.total

    def update(self, ok: bool) -> None:
        self.hits = self.hits * self.decay + ok
        self.total = self.total * self.decay + 1


@dataclass
class Plan:
    level: str  # "none", "l0", "l1", "cascade"
    l0_tokens: int = 0  # copy tokens to propose (l0) or to have level 1 check (cascade)
    exploring: bool = False  # level 1 drafts although its estimate says it does not pay: propose at least one


class DraftPolicy:
    """One request's estimates and decisions (see the module doc)."""

    def __init__(self, target: StepCost | None, l1: StepCost | None, max_order: int = 4, with_l1: bool = False):
        """target, l1: the two engines' step costs (None: unknown); with_l1: a level-1 model exists."""
        self.target, self.l1, self.with_l1 = target, l1, with_l1 or l1 is not None
        self.ngram = {n: Rate(0.3 + 0.1 * n) for n in range(1, max_order + 1)}
        self.ngram.update({-n: Rate(0.2 + 0.1 * n) for n in range(1, max_order + 1)})  # matches in earlier answers
        self.bands = [Rate(p) for p in (0.2, 0.4, 0.6, 0.8, 0.95)]
        self.l1_rate, self.agree, self.confirmed = Rate(0.7), Rate(0.6), Rate(0.8)
        self.idle = 0  # steps since level 1 last drafted

    @property
    def adaptive(self) -> bool:
        return self.target is not None

    # -- estimates ---------------------------------------------------------------------------
    def band(self, confidence: float) -> int:
        return sum(confidence >= edge for edge in L1_BANDS)

    def source_rate(self, source: tuple) -> float:
        kind, key = source
        return (self.ngram[key] if kind == "l0" else self.bands[key] if kind == "l1" else self.confirmed).value

    def observe(self, sources: list[tuple], accepted: int) -> None:
        """The target accepted the first `accepted` tokens of a proposal whose tokens came from
        `sources` (("l0", n-gram order), ("l1", confidence band) or ("confirmed", order))."""
        for i, source in enumerate(sources[:accepted + 1]):
            ok = i < accepted
            kind, key = source
            rate = self.ngram[key] if kind == "l0" else self.bands[key] if kind == "l1" else self.confirmed
            rate.update(ok)
            if kind == "l1":
                self.l1_rate.update(ok)

    # -- decisions ---------------------------------------------------------------------------
    def value(self, rates: list[float], draft_s: float) -> float:
        """Expected committed tokens per second of a block whose drafted tokens are accepted (each
        given the ones before) with `rates`, drafted in `draft_s` seconds."""
        reach, expected = 1.0, 1.0
        for r in rates:
            reach *= r
            expected += reach
        return expected / (draft_s + self.target.seconds(len(rates) + 1))

    def best_prefix(self, rates: list[float], draft_s: float = 0.0, per_token_s: float = 0.0) -> tuple[int, float]:
        """(k, value) of the best first-k of the drafted tokens (k = 0: no draft)."""
        best = (0, self.value([], 0.0))
        for k in range(1, len(rates) + 1):
            v = self.value(rates[:k], draft_s + k * per_token_s)
            if v > best[1]:
                best = (k, v)
        return best

    def plan(self, l0_orders: list[int], max_tokens: int, unread: int) -> Plan:
        """What to draft this block: `l0_orders` is the n-gram order behind each token of the
        level-0 copy, `unread` how many committed tokens level 1 has not read yet (its first step
        reads them all in one call)."""
        if not self.adaptive:
            return Plan("l0", len(l0_orders)) if l0_orders or not self.with_l1 else Plan("l1")
        k0, v0 = self.best_prefix([self.ngram[n].value for n in l0_orders])
        options = [(v0, Plan("l0" if k0 else "none", k0))]
        if self.l1 is not None and max_tokens > 0:
            first = self.l1.seconds(max(unread, 1))
            _, v1 = self.best_prefix([self.l1_rate.value] * max_tokens, first - self.l1.row_s, self.l1.row_s)
            options.append((v1, Plan("l1")))
            if l0_orders:  # level 1 reads the copy with what it has not read, in one call
                rates = [self.agree.value * self.confirmed.value] * len(l0_orders) + [self.l1_rate.value]
                _, vc = self.best_prefix(rates, self.l1.seconds(max(unread, 1) + len(l0_orders)))
                options.append((vc, Plan("cascade", len(l0_orders))))
        plan = max(options, key=lambda option: option[0])[1]
        if self.l1 is not None and plan.level in ("none", "l0"):
            self.idle += 1
            # exploring costs level 1 its catch-up too: only where that is no more than a target step
            catch_up = self.l1.seconds(max(unread, 1))
            if not k0 and self.idle >= EXPLORE_EVERY and catch_up <= self.target.seconds(1):
                plan = Plan("l1", exploring=True)
        if plan.level in ("l1", "cascade"):
            self.idle = 0
        return plan

    def keep_drafting(self, rates: list[float], draft_s: float) -> bool:
        """While level 1 drafts: whether one more token (at level 1's mean rate) is expected to
        raise the block's rate over stopping here."""
        if not self.adaptive:
            return True
        now = self.value(rates, draft_s)
        return self.value(rates + [self.l1_rate.value], draft_s + self.l1.row_s) > now

    def l1_prefix(self, rates: list[float], draft_s: list[float], exploring: bool = False) -> int:
        """How many of level 1's drafted tokens to propose: the prefix with the best rate
        (`draft_s[k]`: seconds spent when token k was drafted); at least one when exploring, so the
        target's verdict refreshes level 1's estimates."""
        if exploring and rates:
            return max(1, self.l1_prefix(rates, draft_s))
        if not self.adaptive or not rates:
            return len(rates)
        values = [self.value(rates[:k], draft_s[k - 1] if k else 0.0) for k in range(len(rates) + 1)]
        return max(range(len(values)), key=values.__getitem__)
