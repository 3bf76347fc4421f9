"""RMSNorm and LayerNorm on the tube: the norm factor lambda_t and gamma folded forward.

n(x) = gamma * c / rho + beta with c = x (RMS) or x - mean(x) (LayerNorm, a projection) and
rho = sqrt(||c||^2 / d + eps). Its Jacobian is diag(gamma) P / rho with ||P|| <= 1, and on the
tube ||c'_t|| >= ||c_t|| - r, so 1/rho <= lambda_t = 1/sqrt(max(||c_t|| - r, 0)^2 / d + eps).
gamma is folded into the next weights (A_q = W_q diag(gamma), ...), beta into their constant
parts. Derivation: docs/soundness.md#folded-block-and-norm-factors.
"""

from __future__ import annotations

import torch

from blockcert.cert.lipschitz.margins import REL_MARGIN
from blockcert.surrogate.view import Norm

Tensor = torch.Tensor


def norm_factor(norm_c: Tensor, radius: Tensor | float, d: int, eps: float) -> Tensor:
    """lambda = 1 / sqrt(max(||c|| - r, 0)^2 / d + eps) >= 1/rho on the tube (inf if eps = 0)."""
    low = (norm_c - radius).clamp_min(0.0)
    return (low.pow(2) / d + eps).rsqrt() * (1 + REL_MARGIN)


def fold_gain(norm: Norm, proj_matrix: Tensor) -> Tensor:
    """A = W diag(gamma) [out, d] in float64: the projection reading the normalised input."""
    return proj_matrix * norm.weight.double()[None, :]


def fold_offset(norm: Norm, matrix: Tensor, bias: Tensor | None) -> Tensor:
    """[out] the projection's constant part in float64: W beta (LayerNorm) plus its bias."""
    out = torch.zeros(matrix.shape[0], dtype=torch.float64)
    if norm.bias is not None:
        out = out + matrix @ norm.bias.double()
    if bias is not None:
        out = out + bias.double()
    return out


def normalise(norm: Norm, x: Tensor) -> tuple[Tensor, Tensor]:
    """(c / rho, ||c||) with c = x (RMS) or x - mean (LayerNorm); the output is gamma * . + beta."""
    c = x - x.mean(-1, keepdim=True) if norm.kind == "layer" else x
    rho = torch.sqrt(c.pow(2).mean(-1, keepdim=True) + norm.eps)
    return c / rho, c.norm(dim=-1)


def apply_norm(norm: Norm, xhat: Tensor) -> Tensor:
    """gamma * xhat + beta in float64."""
    out = norm.weight.double() * xhat
    return out + norm.bias.double() if norm.bias is not None else out
