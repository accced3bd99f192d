"""Target distributions and the speculative acceptance rule.

Drafts are point masses (each level proposes its argmax), so speculative rejection sampling
reduces to: accept draft token x with probability p(x); otherwise sample from p with x
removed and renormalised. Then P(out = x) = p(x) and, for y != x,
P(out = y) = (1 - p(x)) * p(y) / (1 - p(x)) = p(y): the output follows the target exactly,
while a proposal carries only token ids (no draft distribution has to cross a process).
"""
from __future__ import annotations

import math

import numpy as np


def target_probs(logits, temperature: float, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """Rows of logits [n, V] -> the distribution plain sampling would draw from [n, V] (float64)."""
    x = np.asarray(logits, np.float64) / max(temperature, 1e-6)
    if top_k and 0 < top_k < x.shape[-1]:
        kth = np.partition(x, -top_k, axis=-1)[..., -top_k][..., None]
        x = np.where(x < kth, -np.inf, x)
    probs = np.exp(x - x.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, -1)
        # keep the smallest prefix whose mass reaches top_p (the top token always stays)
        sorted_p[(np.cumsum(sorted_p, -1) - sorted_p) >= top_p] = 0.0
        probs = np.zeros_like(probs)
        np.put_along_axis(probs, order, sorted_p, -1)
        probs /= probs.sum(-1, keepdims=True)
    return probs


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    """Inverse-CDF draw from one row of probabilities."""
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(probs) - 1))


def accept_point_draft(probs: np.ndarray, draft: int, rng: np.random.Generator) -> tuple[bool, int]:
    """One step of rejection sampling against a point-mass draft: (accepted, emitted token)."""
    if rng.random() < float(probs[draft]):
        return True, draft
    residual = probs.copy()
    residual[draft] = 0.0
    if float(residual.sum()) <= 0.0:  # p(x) == 1 up to rounding: nothing else can be drawn
        return True, draft
    return False, sample(residual / residual.sum(), rng)


def softmax(logits) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def entropy(logits) -> float:
    """Shannon entropy (nats) of softmax(logits) for one row."""
    x = np.asarray(logits, np.float64)
    logp = x - x.max() - math.log(np.exp(x - x.max()).sum())
    h = float(-(np.exp(logp) * logp).sum())
    return h if math.isfinite(h) else float("nan")


def top_token(logits) -> tuple[int, float, float]:
    """(argmax, its probability, entropy in nats) of one row, with one pass over the vocabulary."""
    x = np.asarray(logits, np.float64)
    top = int(x.argmax())
    e = np.exp(x - x[top])
    z = float(e.sum())
    h = math.log(z) - float((e * (x - x[top])).sum()) / z
    return top, 1.0 / z, h if math.isfinite(h) else float("nan")
