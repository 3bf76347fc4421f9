"""The global deviation bound in exact rationals, the figure the reports quote.

Block k has local error eps_k, optionally a Lipschitz constant L_k on its tube, and optionally a
saturation constant a_k (its residual update moves by at most a_k: d(g(y), g(x)) <= d(y, x) + a_k).
With B_0 = 0:

    B_k = min(L_k * B_{k-1}, B_{k-1} + a_k) + eps_k

using only the constants that are claimed (None). Every block must claim at least one of them.
The Lean kernel recomputes the same recursion on the fixed-point grid (compose.grid, term for
term `lean/BlockCert/Bound.lean`), with every constant and product rounded up, so its value is
at least this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from blockcert.errors import BlockCertError


def _check_lengths(eps: Sequence, lips: Sequence, sats: Sequence | None) -> None:
    if len(eps) != len(lips) or (sats is not None and len(sats) != len(eps)):
        counts = f"{len(eps)} local errors but {len(lips)} Lipschitz constants"
        if sats is not None:
            counts += f" and {len(sats)} saturation constants"
        raise BlockCertError(f"{counts}: every composed block needs one of each.")


def step_bound(
    prev: Fraction, eps: Fraction, lip: Fraction | None, sat: Fraction | None
) -> Fraction:
    """stepBound of Bound.lean: min(L * B, B + a) + eps over the claimed constants."""
    candidates = []
    if lip is not None:
        candidates.append(Fraction(lip) * prev)  # Lipschitz on the tube of radius B
    if sat is not None:
        candidates.append(prev + Fraction(sat))  # saturation: the update moves by <= a
    if not candidates:
        raise BlockCertError(
            "a block claims neither a Lipschitz nor a saturation constant; the bound needs one."
        )
    return min(candidates) + Fraction(eps)


def bound_trajectory(
    eps: Sequence[Fraction],
    lips: Sequence[Fraction | None],
    sats: Sequence[Fraction | None] | None = None,
) -> list[Fraction]:
    """[B_0, ..., B_L] with B_0 = 0; eps[k-1], lips[k-1], sats[k-1] belong to the k-th block.

    sats=None: no saturation constants (the plain recursion B_k = L_k * B_{k-1} + eps_k).
    """
    _check_lengths(eps, lips, sats)
    sats = [None] * len(eps) if sats is None else sats
    bounds = [Fraction(0)]
    for eps_k, lip_k, sat_k in zip(eps, lips, sats, strict=True):
        for name, value in (("Lipschitz", lip_k), ("saturation", sat_k)):
            if value is not None and Fraction(value) < 0:
                raise BlockCertError(f"a {name} constant is negative ({value}); use None instead.")
        # B_k = min(L_k * B_{k-1}, B_{k-1} + a_k) + eps_k
        bounds.append(step_bound(bounds[-1], eps_k, lip_k, sat_k))
    return bounds


def closed_form_bound(eps: Sequence[Fraction], lips: Sequence[Fraction]) -> Fraction:
    """Without saturation: B_L = sum_k eps_k * prod_{j>k} L_j, to cross-check the recursion."""
    _check_lengths(eps, lips, None)
    total = Fraction(0)
    for k, eps_k in enumerate(eps):
        product = Fraction(1)
        for lip_j in lips[k + 1 :]:
            product *= Fraction(lip_j)
        total += Fraction(eps_k) * product
    return total


def step_taken(prev: Fraction, lip: Fraction | None, sat: Fraction | None) -> str:
    """Which term of min(L * B, B + a) the step takes at B = prev: "L*B" or "B+a" (a tie is
    L*B); with one constant claimed, that one. Reports say it beside every block."""
    if lip is None:
        return "B+a"
    if sat is None or Fraction(lip) * prev <= prev + Fraction(sat):
        return "L*B"
    return "B+a"
