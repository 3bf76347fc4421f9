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


def perron_root_upper(apply, start: torch.Tensor, iterations: int) -> torch.Tensor:
    """Upper bounds on the spectral radius of non-negative matrices B (batched over all but the
    last dimension; apply(y) = B y on [..., n]): rho(B) <= max_i (B y)_i / y_i for ANY positive
    y (Collatz-Wielandt). A few power steps from `start` make y near the Perron vector; the floor
    keeps every entry positive."""
    y = start
    for _ in range(iterations):
        y = apply(y)
        y = y / y.amax(-1, keepdim=True).clamp_min(1e-300) + 1e-12
    return (apply(y) / y).amax(-1)


def spectral_norm_upper_batched(mats: torch.Tensor, squarings: int = 4) -> torch.Tensor:
    """Upper bounds on ||M_i||_2 for a batch mats [..., m, n], in float64.

    With S = M^T M / ||M||_F^2 (eigenvalues in [0, 1], trace 1):
    ||M||_2^2 = ||M||_F^2 lambda_max(S) <= ||M||_F^2 tr(S^(2^s))^(2^-s), and tr(S^(2^s)) is the
    squared Frobenius norm of S^(2^(s-1)). Over-estimates by at most rank^(2^-(s+1)); capped by
    the Frobenius norm. The normalisation keeps every power in [0, 1] (no overflow).
    """
    m = mats.detach().double()
    if m.shape[-2] < m.shape[-1]:
        m = m.transpose(-1, -2)
    frob = torch.linalg.matrix_norm(m)  # [...]
    safe = torch.where(frob > 0, frob, torch.ones_like(frob))
    s = m.transpose(-1, -2) @ m / (safe * safe)[..., None, None]
    for _ in range(squarings - 1):
        s = s @ s
    trace = (s * s).sum((-2, -1))  # tr(S^(2^squarings)), S symmetric
    factor = trace.clamp_min(0.0) ** (1.0 / 2 ** (squarings + 1))
    return torch.minimum(frob * factor, frob) * SAFETY
