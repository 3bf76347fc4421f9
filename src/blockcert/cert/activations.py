"""Ranges of the MLP activations (SiLU, tanh-GELU) and their derivatives, as sound bounds.

The constants are the functions' extrema, found numerically and rounded outward; the range
functions bound an activation or a derivative over an interval from its ends and the extrema
the interval contains (containment tests are widened by 1e-2: arguments are known to ~1e-5).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

SILU_SLOPE = 1.0999  # max |silu'(a)| = 1.09984 (a = 2.3994)
SILU_SLOPE_MIN = -0.0999  # min silu'(a) = -0.09984 (a = -2.3994)
SILU_CURVATURE = 0.5001  # max |silu''(a)| = silu''(0) = 0.5
SILU_MIN = -0.27847  # min silu(a) = -0.278465 at a = -1.27846
SILU_ARGMIN = -1.27846
SILU_SLOPE_ARGMAX = 2.39936  # silu' has its max there and its min at -2.39936 (and no other)
SILU_LOBE = 0.036915  # |silu''| on its negative lobes: at most 0.0369144 (|a| = 3.43584)
SILU_LOBE_ARG = 3.43584
GELU_SLOPE = 1.13  # max |gelu_tanh'(a)| = 1.1290
GELU_CURVATURE = 0.8  # max |gelu_tanh''(a)| = gelu_tanh''(0) = sqrt(2/pi) = 0.79788
GELU_MIN = -0.17005  # min gelu_tanh(a) = -0.170041 at a = -0.7525
GELU_ARGMIN = -0.7525
SILU_JERK = 0.3082  # max |silu'''(a)| = 0.308182 (a = -+1.0320)


def silu_slope(a: Tensor) -> Tensor:
    s = torch.sigmoid(a)
    return s * (1 + a * (1 - s))


def silu_curvature(a: Tensor) -> Tensor:
    s = torch.sigmoid(a)
    return s * (1 - s) * (2 + a * (1 - 2 * s))


def silu_slope_range(lo: Tensor, hi: Tensor) -> Tensor:
    """>= max |silu'| on [lo, hi] elementwise: silu' is monotone between its extrema at
    -+SILU_SLOPE_ARGMAX, so the maximum is at an end unless an extremum lies inside (the
    containment test is widened: the arguments are known to ~1e-5)."""
    ends = torch.maximum(silu_slope(lo).abs(), silu_slope(hi).abs())
    top = (lo < SILU_SLOPE_ARGMAX + 1e-2) & (hi > SILU_SLOPE_ARGMAX - 1e-2)
    bottom = (lo < -SILU_SLOPE_ARGMAX + 1e-2) & (hi > -SILU_SLOPE_ARGMAX - 1e-2)
    ends = torch.where(top, torch.full_like(ends, SILU_SLOPE), ends)
    ends = torch.where(bottom, ends.clamp_min(-SILU_SLOPE_MIN), ends)
    return ends * (1 + 1e-9) + 1e-12


def silu_curvature_range(lo: Tensor, hi: Tensor) -> Tensor:
    """>= max |silu''| on [lo, hi] elementwise. silu'' is even; on [0, inf) it falls from 1/2
    (at 0) through 0 (at SILU_SLOPE_ARGMAX) to its minimum -SILU_LOBE (at SILU_LOBE_ARG), then
    rises towards 0: |silu''| over the |a| in [lo, hi] peaks at an end of that range, or at the
    lobe when it lies inside."""
    straddles = (lo <= 0) & (hi >= 0)
    near = torch.where(straddles, torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs()))
    far = torch.maximum(lo.abs(), hi.abs())
    ends = torch.maximum(silu_curvature(near).abs(), silu_curvature(far).abs())
    lobe = (near < SILU_LOBE_ARG + 1e-2) & (far > SILU_LOBE_ARG - 1e-2)
    ends = torch.where(lobe, ends.clamp_min(SILU_LOBE), ends)
    return ends * (1 + 1e-9) + 1e-12


def activation_range(
    fn, lo: Tensor, hi: Tensor, f_min: float, argmin: float
) -> tuple[Tensor, Tensor]:
    """Range of a function that decreases before `argmin` and increases after it."""
    f_lo, f_hi = fn(lo), fn(hi)
    top = torch.maximum(f_lo, f_hi)
    # the argmin is known to ~1e-5: widen the containment test so that it is never missed
    contains = (lo < argmin + 1e-2) & (hi > argmin - 1e-2)
    bottom = torch.where(contains, torch.full_like(lo, f_min), f_lo)
    bottom = torch.minimum(bottom, f_hi)
    return bottom, top
