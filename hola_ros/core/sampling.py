"""Target distributions and the speculative acceptance rule.

Drafts are point masses (each level proposes its argmax), so speculative rejection sampling
reduces to: accept draft token x with probability p(x); otherwise sample from p with x
removed and renormalised. Then P(out = x) = p(x) and, for y != x,
P(out = y) = (1 - p(x)) * p(y) / (1 - p(x)) = p(y): the output follows the target exactly,
while a proposal carries only token ids (no draft distribution has to cross a process).
"""
from __future__ import annotations

import math


def target_probs(logits, temperature: float, top_k: int = 0, top_p: float = 1.0):
    """Rows of logits [n, V] -> the distribution plain sampling would draw from [n, V]."""
    import torch

    x = logits.float() / max(temperature, 1e-6)
    if top_k and 0 < top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    probs = torch.softmax(x, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = torch.sort(probs, dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the top token always stays)
        drop = (torch.cumsum(sorted_p, dim=-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample(probs, generator) -> int:
    import torch

    return int(torch.multinomial(probs, 1, generator=generator))


def accept_point_draft(probs, draft: int, generator) -> tuple[bool, int]:
    """One step of rejection sampling against a point-mass draft: (accepted, emitted token)."""
    import torch

    p_x = float(probs[draft])
    if float(torch.rand((), generator=generator)) < p_x:
        return True, draft
    residual = probs.clone()
    residual[draft] = 0.0
    if float(residual.sum()) <= 0.0:  # p(x) == 1 up to rounding: nothing else can be drawn
        return True, draft
    return False, sample(residual / residual.sum(), generator)


def entropy(logits) -> float:
    """Shannon entropy (nats) of softmax(logits) for one row."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    h = float(-(logp.exp() * logp).sum())
    return h if math.isfinite(h) else float("nan")
