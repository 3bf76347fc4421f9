"""Sound upper bounds on spectral norms.

Power iteration gives a LOWER estimate of ||W||_2, so it cannot go into a sound bound. Instead
use the Schatten-2p norm, which is always >= ||W||_2: ||W||_2^(2p) <= tr((W W^T)^p), computed by
repeated squaring of the Gram matrix in float64 (p = 2^squarings). For a matrix of rank r it
overestimates by at most r^(1/2p): 1.2% at p = 256 and r = 2^12. The Frobenius norm caps it.
"""

from __future__ import annotations

import math

import torch

# Covers the float64 rounding of the squarings and the final root (relative error << 1e-9).
SAFETY = 1.0 + 1e-9


def spectral_norm_upper(weight: torch.Tensor, squarings: int = 8) -> float:
    w = weight.detach().double().cpu()
    frobenius = float(w.norm())
    if frobenius == 0.0:
        return 0.0
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    log_scale = 0.0  # gram^(2^i) == exp(log_scale) * current
    current = gram
    for _ in range(squarings):
        norm = float(current.norm())
        current = current / norm
        log_scale = 2.0 * (log_scale + math.log(norm))
        current = current @ current
    trace = float(torch.trace(current))
    p = 2**squarings
    schatten = math.exp((log_scale + math.log(trace)) / (2 * p))
    return min(schatten, frobenius) * SAFETY


def spectral_norm_estimate(weight: torch.Tensor, iterations: int = 50) -> float:
    """Power-iteration estimate (a lower bound); for reporting tightness only."""
    w = weight.detach().double().cpu()
    v = torch.ones(w.shape[1], dtype=torch.float64) / math.sqrt(w.shape[1])
    for _ in range(iterations):
        v = w.T @ (w @ v)
        v = v / v.norm().clamp_min(1e-300)
    return float((w @ v).norm())
