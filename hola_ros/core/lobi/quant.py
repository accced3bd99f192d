"""Weight quantization and the budgeted per-block bit-width search.

Format (the same bits feed the torch backend, ONNX Runtime's MatMulNBits and the manifest's
byte counts): group-wise affine quantization along the input dimension, `group` weights per
group, w ~= (q - zp) * scale with q, zp unsigned integers of `bits` bits and scale stored as
fp16; 16 bits means plain fp16 weights. Integer zero points are what ORT's fast MatMulNBits
kernels take (float zero points fall back to a path measured ~20x slower).

Plain torch is used rather than torchao / optimum-quanto: the search needs fake-quantized
weights it can swap into a block and evaluate, and the deployed kernels are ONNX Runtime's
MatMulNBits, whose exact layout we write ourselves, so a library's own packing would only be
converted again (and torchao releases are pinned to specific torch versions).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CHOICES = (4, 8, 16)
_SHRINK = (1.0, 0.95, 0.9, 0.85, 0.8)  # clipping ratios tried per group; keeps the lowest MSE


class BudgetError(ValueError):
    """No configuration fits the requested memory budget."""


@dataclass
class QTensor:
    bits: int
    shape: tuple[int, int]  # [out, in]
    group: int
    data: torch.Tensor  # uint8 codes (packed two per byte for 4 bits) or fp16 weights for 16 bits
    scale: torch.Tensor | None = None  # fp16 [out, in // group]
    zp: torch.Tensor | None = None  # uint8 [out, in // group]

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        if self.bits == 16:
            return {f"{prefix}.w16": self.data}
        return {f"{prefix}.q{self.bits}": self.data, f"{prefix}.scale": self.scale, f"{prefix}.zp": self.zp}

    @classmethod
    def from_tensors(cls, tensors: dict, prefix: str, group: int) -> "QTensor":
        if f"{prefix}.w16" in tensors:
            w = tensors[f"{prefix}.w16"]
            return cls(16, tuple(w.shape), group, w)
        for bits in (4, 8):
            if f"{prefix}.q{bits}" in tensors:
                scale = tensors[f"{prefix}.scale"]
                shape = (scale.shape[0], scale.shape[1] * group)
                return cls(bits, shape, group, tensors[f"{prefix}.q{bits}"], scale, tensors[f"{prefix}.zp"])
        raise KeyError(f"no quantized tensor {prefix!r} in the artifact")

    def codes(self) -> torch.Tensor:
        """Unpacked codes [out, in] (uint8)."""
        if self.bits == 4:
            lo, hi = self.data & 15, self.data >> 4
            return torch.stack([lo, hi], dim=-1).reshape(self.shape)
        return self.data

    def dequantize(self) -> torch.Tensor:
        if self.bits == 16:
            return self.data.float()
        out, k = self.shape
        q = self.codes().reshape(out, k // self.group, self.group).float()
        w = (q - self.zp.float().unsqueeze(-1)) * self.scale.float().unsqueeze(-1)
        return w.reshape(out, k)


def group_for(in_features: int, group: int) -> int:
    """The group size actually used: `group` when it divides the row, else one group per row."""
    return group if in_features % group == 0 else in_features


def nbytes(shape: tuple[int, int], bits: int, group: int) -> int:
    out, k = shape
    if bits == 16:
        return 2 * out * k
    g = group_for(k, group)
    return out * k * bits // 8 + out * (k // g) * 3  # codes + fp16 scale + uint8 zero point


def quantize(w: torch.Tensor, bits: int, group: int = 32) -> QTensor:
    w = w.detach().float()
    out, k = w.shape
    g = group_for(k, group)
    if bits == 16:
        return QTensor(16, (out, k), g, w.half())
    if bits not in (4, 8):
        raise ValueError(f"bits must be one of {CHOICES}")
    qmax = 2 ** bits - 1
    grp = w.reshape(out, k // g, g)
    lo = grp.amin(-1, keepdim=True).clamp(max=0)
    hi = grp.amax(-1, keepdim=True).clamp(min=0)
    best = None
    for ratio in _SHRINK:
        scale = ((hi - lo) * ratio / qmax).clamp(min=1e-8).half().float()
        zp = torch.clamp(torch.round(-lo * ratio / scale), 0, qmax)
        q = torch.clamp(torch.round(grp / scale) + zp, 0, qmax)
        err = ((q - zp) * scale - grp).pow(2).sum(-1, keepdim=True)
        if best is None:
            best = [err, scale, zp, q]
        else:
            better = err < best[0]
            for i, new in enumerate((err, scale, zp)):
                best[i] = torch.where(better, new, best[i])
            best[3] = torch.where(better, q, best[3])
    _, scale, zp, q = best
    codes = q.reshape(out, k).to(torch.uint8)
    if bits == 4:
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return QTensor(bits, (out, k), g, codes.contiguous(), scale[..., 0].half().contiguous(),
                   zp[..., 0].to(torch.uint8).contiguous())


def fake_quant(w: torch.Tensor, bits: int, group: int = 32) -> torch.Tensor:
    return quantize(w, bits, group).dequantize()


def search_bits(errors: dict[str, dict[int, float]], costs: dict[str, dict[int, int]], budget_bytes: int,
                fixed_bytes: int = 0, unit: int = 4096) -> dict[str, int]:
    """Per-block bits minimising the summed calibration error with total bytes <= budget.

    A multiple-choice knapsack solved exactly by dynamic programming over bytes rounded UP to
    `unit` (so the chosen configuration always fits). Raises BudgetError when even the
    smallest configuration does not fit.
    """
    names = list(errors)
    cheapest = fixed_bytes + sum(min(costs[n].values()) for n in names)
    if cheapest > budget_bytes:
        raise BudgetError(
            f"budget {budget_bytes / 1e6:.2f} MB is below the smallest possible model "
            f"({cheapest / 1e6:.2f} MB with every block at {min(CHOICES)} bits and the chosen ranks); "
            f"raise --budget-mb or compress ranks harder")
    cap = (budget_bytes - fixed_bytes) // unit
    inf = float("inf")
    best = np.full(cap + 1, inf)
    best[0] = 0.0
    picks = []
    for n in names:
        nxt = np.full(cap + 1, inf)
        arg = np.zeros(cap + 1, dtype=np.int16)
        for bits, cost in costs[n].items():
            c = -(-cost // unit)
            if c > cap:
                continue
            cand = np.full(cap + 1, inf)
            cand[c:] = best[:cap + 1 - c] + errors[n][bits]
            take = cand < nxt
            nxt[take], arg[take] = cand[take], bits
        best = nxt
        picks.append(arg)
    end = int(np.argmin(best))
    if not np.isfinite(best[end]):  # rounding up to units can make a just-fitting budget infeasible
        raise BudgetError(f"budget {budget_bytes / 1e6:.2f} MB is too tight to fit (minimum ~{cheapest / 1e6:.2f} MB)")
    chosen = {}
    for n, arg in zip(reversed(names), reversed(picks)):
        bits = int(arg[end])
        chosen[n] = bits
        end -= -(-costs[n][bits] // unit)
    return {n: chosen[n] for n in names}
