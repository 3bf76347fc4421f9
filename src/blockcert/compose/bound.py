"""The global deviation bound in exact rationals: the recursion the Lean checker recomputes."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from blockcert.errors import BlockCertError


def _check_lengths(eps: Sequence[Fraction], lips: Sequence[Fraction]) -> None:
    if len(eps) != len(lips):
        raise BlockCertError(
            f"{len(eps)} local errors but {len(lips)} Lipschitz constants: every composed "
            "block needs both."
        )


def bound_trajectory(eps: Sequence[Fraction], lips: Sequence[Fraction]) -> list[Fraction]:
    """[B_0, ..., B_L] with B_0 = 0; eps[k-1], lips[k-1] belong to the k-th composed block."""
    _check_lengths(eps, lips)
    bounds = [Fraction(0)]
    for eps_k, lip_k in zip(eps, lips, strict=True):
        bounds.append(Fraction(lip_k) * bounds[-1] + Fraction(eps_k))  # B_k = L_k * B_{k-1} + eps_k
    return bounds


def closed_form_bound(eps: Sequence[Fraction], lips: Sequence[Fraction]) -> Fraction:
    """B_L = sum_k eps_k * prod_{j>k} L_j, for cross-checking `bound_trajectory(...)[-1]`."""
    _check_lengths(eps, lips)
    total = Fraction(0)
    for k, eps_k in enumerate(eps):
        product = Fraction(1)
        for lip_j in lips[k + 1 :]:
            product *= Fraction(lip_j)
        total += Fraction(eps_k) * product
    return total
