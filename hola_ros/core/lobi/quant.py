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

from .search import BudgetError, search_bits  # noqa: F401 (the torch path's build imports them from here)

CHOICES = (4, 8, 16)
_SHRINK = (1.0, 0.95, 0.9, 0.85, 0.8)  # clipping ratios tried per group; keeps the lowest MSE


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
