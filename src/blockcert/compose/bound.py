"""The global deviation bound in exact rationals (the recursion Lean checks)."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction


def bound_trajectory(eps: Sequence[Fraction], lips: Sequence[Fraction]) -> list[Fraction]:
    """[B_0, ..., B_L] with B_0 = 0 and B_k = L_k * B_{k-1} + eps_k."""
    if len(eps) != len(lips):
        raise ValueError(f"{len(eps)} eps values but {len(lips)} Lipschitz constants")
    bounds = [Fraction(0)]
    for eps_k, lip_k in zip(eps, lips, strict=True):
        bounds.append(lip_k * bounds[-1] + eps_k)  # B_k = L_k * B_{k-1} + eps_k
    return bounds


def closed_form_bound(eps: Sequence[Fraction], lips: Sequence[Fraction]) -> Fraction:
    """sum_k eps_k * prod_{j>k} L_j, equal to bound_trajectory(...)[-1]."""
    total = Fraction(0)
    for k, eps_k in enumerate(eps):
        product = Fraction(1)
        for lip in lips[k + 1 :]:
            product *= lip
        total += eps_k * product
    return total
