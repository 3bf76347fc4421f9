"""The global bound on the fixed-point grid: the integer recursion the Lean kernel recomputes.

A natural number n on the grid stands for n / DENOMINATOR. Every measured constant is rounded
UP onto the grid (`to_grid`), and the recursion rounds its one product up too, so the grid
bound is at least the exact rational recursion on the same constants (compose.bound):

    B_0 = 0,   B_k = min(ceil(L_k * B_{k-1} / den), B_{k-1} + a_k) + eps_k

over the constants that are claimed (None: not claimed; at least one per block). This is
`stepCore` / `bound` of lean/BlockCert/Bound.lean term for term: `ceil_div` is its `ceilDiv`
(floor division, plus one unless den divides), `min` its `nmin`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from blockcert.errors import BlockCertError

DENOMINATOR = 10**15  # grid step 1e-15: below the resolution of a float's 16 digits at >= 0.1


@dataclass(frozen=True)
class GridBlock:
    """One block's constants on the grid: eps, and L and a where claimed (None: not claimed)."""

    eps: int
    lip: int | None
    sat: int | None


def to_grid(value: Fraction | float | int, den: int = DENOMINATOR) -> int:
    """The smallest grid natural n with n / den >= value (value >= 0, finite)."""
    try:
        q = Fraction(value)  # exact for floats
    except (ValueError, OverflowError) as err:
        raise BlockCertError(f"cannot put {value!r} on the grid: it is not finite.") from err
    if q < 0:
        raise BlockCertError(f"cannot put the negative value {value} on the grid of naturals.")
    return math.ceil(q * den)


def ceil_div(x: int, d: int) -> int:
    """ceil(x / d) for x >= 0, d >= 1 (Lean's `ceilDiv`)."""
    return -(-x // d)


def step_core(den: int, lip: int | None, sat: int | None, prev: int) -> int:
    """min(ceil(L * B / den), B + a) over the claimed constants (Lean's `stepCore`)."""
    candidates = []
    if lip is not None:
        candidates.append(ceil_div(lip * prev, den))  # Lipschitz on the tube of radius B
    if sat is not None:
        candidates.append(prev + sat)  # saturation: the update moves by <= a
    if not candidates:
        raise BlockCertError(
            "a block claims neither a Lipschitz nor a saturation constant; the bound needs one."
        )
    return min(candidates)


def grid_trajectory(blocks: Sequence[GridBlock], den: int = DENOMINATOR) -> list[int]:
    """[B_0, ..., B_n] on the grid, B_0 = 0 (Lean's `bound den eps L a k` for k = 0..n)."""
    if den < 1:
        raise BlockCertError(f"the grid denominator must be >= 1, got {den}.")
    bounds = [0]
    for block in blocks:
        # B_k = min(ceil(L_k * B_{k-1} / den), B_{k-1} + a_k) + eps_k
        bounds.append(step_core(den, block.lip, block.sat, bounds[-1]) + block.eps)
    return bounds


def grid_blocks(
    eps: Sequence[Fraction],
    lips: Sequence[Fraction | None],
    sats: Sequence[Fraction | None] | None = None,
    den: int = DENOMINATOR,
) -> list[GridBlock]:
    """The blocks' exact constants rounded up onto the grid (sats=None: no saturation)."""
    sats = [None] * len(eps) if sats is None else sats
    if not len(eps) == len(lips) == len(sats):
        raise BlockCertError(
            f"{len(eps)} local errors, {len(lips)} Lipschitz and {len(sats)} saturation "
            "constants: every composed block needs one of each."
        )

    def up(value: Fraction | None) -> int | None:
        return None if value is None else to_grid(value, den)

    return [
        GridBlock(to_grid(e, den), up(lip), up(sat))
        for e, lip, sat in zip(eps, lips, sats, strict=True)
    ]


def from_grid(n: int, den: int = DENOMINATOR) -> Fraction:
    """The rational a grid natural stands for."""
    return Fraction(n, den)
