"""Activation-aware truncated SVD of linear layers.

For a layer y = W x and calibration inputs X (rows x), the output error of a replacement W'
is ||(W - W') X^T||_F. With the input Gram matrix C = X^T X = L L^T this equals
||(W - W') L||_F, so the best rank-r W' is the truncated SVD of W L mapped back by L^-1, and
its relative output error is sqrt(sum of the dropped squared singular values / all of them).
That is the energy criterion used to pick each layer's rank. The eigen-decomposition of the
small [in, in] matrix L^T W^T W L gives the same singular values and right vectors as the SVD
of W L, which keeps the 49k-row output layer cheap.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Spectrum:
    """Whitened spectrum of one layer: enough to pick a rank and build factors."""

    eigvals: torch.Tensor  # squared singular values of W L, descending (float64)
    vecs: torch.Tensor  # right singular vectors of W L, columns (float64 [in, in])
    l_inv: torch.Tensor  # L^-1 (float64 [in, in])
    l_mat: torch.Tensor  # L (float64 [in, in])

    def error(self, rank: int) -> float:
        """Relative calibration output error of the rank-`rank` truncation."""
        total = float(self.eigvals.sum())
        if total <= 0:
            return 0.0
        return float(self.eigvals[rank:].sum().clamp(min=0) / total) ** 0.5


def spectrum(weight: torch.Tensor, gram: torch.Tensor, damp: float = 1e-6, max_damp: float = 1e-2) -> Spectrum:
    w = weight.detach().double()
    c = gram.double()
    eye = torch.eye(c.shape[0], dtype=c.dtype)
    scale = c.diagonal().mean().clamp(min=1e-12)
    # a Gram matrix summed in float32 over fewer tokens than input features is singular up to
    # rounding, which differs between CPUs: raise the damping tenfold until it factors (GPTQ damps 1%)
    while True:
        l_mat, info = torch.linalg.cholesky_ex(c + damp * scale * eye)
        if int(info) == 0:
            break
        if damp >= max_damp:
            raise ValueError(f"calibration Gram matrix is not positive definite even with damping {damp:g}")
        damp *= 10
    l_inv = torch.linalg.solve_triangular(l_mat, torch.eye(c.shape[0], dtype=c.dtype), upper=False)
    m = l_mat.T @ (w.T @ w) @ l_mat
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    order = torch.argsort(vals, descending=True)
    return Spectrum(vals[order].clamp(min=0), vecs[:, order], l_inv, l_mat)


def factors(weight: torch.Tensor, spec: Spectrum, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [rank, in], B [out, rank]) with W ~= B @ A; the singular values are split evenly
    between the two factors so both quantize with similar ranges."""
    v = spec.vecs[:, :rank]
    b = weight.detach().double() @ spec.l_mat @ v  # = U_r Sigma_r
    a = v.T @ spec.l_inv
    sigma = spec.eigvals[:rank].sqrt().clamp(min=1e-12)
    half = sigma.sqrt()
    return (a * half.unsqueeze(1)).float(), (b / half.unsqueeze(0)).float()


def choose_rank(spec: Spectrum, shape: tuple[int, int], tol: float, pay_ratio: float, step: int) -> int | None:
    """Smallest rank (a multiple of `step`) within `tol` relative error, or None when that
    rank would not cut the layer's parameters below `pay_ratio` of dense."""
    out, k = shape
    limit = int(pay_ratio * out * k / (out + k))
    rank = step
    while rank <= min(limit, k, out):
        if spec.error(rank) <= tol:
            return rank
        rank += step
    return None
