"""Optional LoRA recovery of the low-rank layers (off by default, bounded in seconds).

Each low-rank layer B·A gets a rank-4 adapter (the paper's r = 4) trained by distillation:
the uncompressed model's next-token distribution is the teacher, KL(teacher || student) the
loss, calibration sequences the data. The tuned layer B·A + b·a is then truncated back to the
layer's rank with the same whitened SVD, so the artifact's shapes (and the budget) do not
change. Plain torch rather than peft: the adapter wraps our own two-factor modules and is
merged and re-truncated right away, which is a dozen lines here.
"""
from __future__ import annotations

import copy
import time

import torch

from .lowrank import factors, spectrum


class _LoRA(torch.nn.Module):
    def __init__(self, a: torch.Tensor, b: torch.Tensor, rank: int):
        super().__init__()
        self.register_buffer("a", a.clone())
        self.register_buffer("b", b.clone())
        self.la = torch.nn.Parameter(torch.randn(rank, a.shape[1]) * a.shape[1] ** -0.5)
        self.lb = torch.nn.Parameter(torch.zeros(b.shape[0], rank))  # starts as the plain low-rank layer

    def forward(self, x):
        return (x @ self.a.T) @ self.b.T + (x @ self.la.T) @ self.lb.T


def _kl(teacher_logits, student_logits) -> torch.Tensor:
    t = torch.log_softmax(teacher_logits.float(), -1)
    s = torch.log_softmax(student_logits.float(), -1)
    return (t.exp() * (t - s)).sum(-1).mean()


def recover(model, parts: dict, seqs: torch.Tensor, gram, seconds: float, rank: int = 4, lr: float = 1e-3,
            batch: int = 4, progress=None) -> dict:
    """Tune the low-rank entries of `parts` ({name: {"a", "b"}}) in place; returns a report.

    `gram(name)` gives the layer's input Gram matrix for the re-truncation.
    """
    names = [n for n, p in parts.items() if "a" in p]
    if not names or seconds <= 0:
        return {"steps": 0, "layers": len(names)}
    student = copy.deepcopy(model)
    for p in student.parameters():
        p.requires_grad_(False)
    adapters = {}
    for name in names:
        parent, _, child = name.rpartition(".")
        adapters[name] = _LoRA(parts[name]["a"], parts[name]["b"], rank)
        setattr(student.get_submodule(parent) if parent else student, child, adapters[name])
    params = [p for ad in adapters.values() for p in (ad.la, ad.lb)]
    opt = torch.optim.AdamW(params, lr=lr)
    probe = seqs[:batch]
    with torch.no_grad():
        teacher_probe = model(input_ids=probe, use_cache=False).logits
        kl_before = float(_kl(teacher_probe, student(input_ids=probe, use_cache=False).logits))
    t0, step = time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        start = (step * batch) % len(seqs)
        ids = seqs[start:start + batch]
        with torch.no_grad():
            teacher = model(input_ids=ids, use_cache=False).logits
        loss = _kl(teacher, student(input_ids=ids, use_cache=False).logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if progress:
            progress("recovery", min(int(time.monotonic() - t0), int(seconds)), int(seconds))
    with torch.no_grad():
        kl_after = float(_kl(teacher_probe, student(input_ids=probe, use_cache=False).logits))
        for name, ad in adapters.items():
            tuned = ad.b @ ad.a + ad.lb @ ad.la
            r = ad.a.shape[0]
            a, b = factors(tuned, spectrum(tuned, gram(name)), r)
            parts[name] = {"a": a, "b": b}
    return {"steps": step, "layers": len(names), "seconds": round(time.monotonic() - t0, 1),
            "kl_before": kl_before, "kl_after_adapters": kl_after}
