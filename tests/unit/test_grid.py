"""The fixed-point grid recursion the Lean kernel recomputes, against exact rationals."""

import math
import random
from fractions import Fraction

import pytest

from blockcert.compose.bound import bound_trajectory
from blockcert.compose.grid import (
    DENOMINATOR,
    GridBlock,
    ceil_div,
    from_grid,
    grid_blocks,
    grid_trajectory,
    to_grid,
)
from blockcert.errors import BlockCertError


def lean_step(den: int, block: GridBlock, prev: int) -> int:
    """Bound.lean's stepBound, transliterated: ceilDiv as floor + (0 if exact else 1) by
    `ble x (d * (x / d))`, nmin by `ble x y`, one match arm per claim pattern."""

    def ceil_div_lean(x: int, d: int) -> int:
        q = x // d
        return q if x <= d * q else q + 1

    def mul_up(lip: int) -> int:
        return ceil_div_lean(lip * prev, den)

    if block.lip is not None and block.sat is not None:
        x, y = mul_up(block.lip), prev + block.sat
        core = x if x <= y else y
    elif block.lip is not None:
        core = mul_up(block.lip)
    elif block.sat is not None:
        core = prev + block.sat
    else:
        core = 0
    return core + block.eps


def test_to_grid_is_the_smallest_grid_point_at_or_above():
    rng = random.Random(0)
    values = [Fraction(0), Fraction(1, 3), Fraction(10**20 + 1, 7), 1e-300, 0.1, 2.5e7]
    values += [Fraction(rng.randrange(1, 10**30), rng.randrange(1, 10**20)) for _ in range(50)]
    for value in values:
        n = to_grid(value)
        assert from_grid(n) >= Fraction(value) > from_grid(n - 1)
    assert to_grid(Fraction(3, 4), den=4) == 3 and to_grid(0.1) == 10**14 + 1  # 0.1 > 1/10


@pytest.mark.parametrize("bad", [-1e-9, Fraction(-1, 3), math.nan, math.inf])
def test_to_grid_refuses_what_is_not_a_nonnegative_number(bad):
    with pytest.raises(BlockCertError):
        to_grid(bad)


def test_ceil_div_rounds_up_exactly():
    rng = random.Random(1)
    for _ in range(200):
        x, d = rng.randrange(0, 10**40), rng.randrange(1, 10**16)
        assert ceil_div(x, d) == math.ceil(Fraction(x, d))


def _random_chain(rng: random.Random, n: int):
    eps, lips, sats = [], [], []
    for _ in range(n):
        eps.append(Fraction(rng.randrange(0, 10**12), rng.randrange(1, 10**9)))
        lip = Fraction(rng.randrange(1, 10**9), rng.randrange(1, 10**7))
        sat = Fraction(rng.randrange(0, 10**12), rng.randrange(1, 10**8))
        claim = rng.choice(["both", "lip", "sat"])
        lips.append(None if claim == "sat" else lip)
        sats.append(None if claim == "lip" else sat)
    return eps, lips, sats


def test_grid_recursion_is_the_lean_recursion_and_bounds_the_exact_one():
    rng = random.Random(2)
    for _ in range(30):
        eps, lips, sats = _random_chain(rng, rng.randrange(1, 31))
        blocks = grid_blocks(eps, lips, sats)
        grid = grid_trajectory(blocks)
        exact = bound_trajectory(eps, lips, sats)
        lean = [0]
        for block in blocks:
            lean.append(lean_step(DENOMINATOR, block, lean[-1]))
        assert grid == lean
        assert all(from_grid(g) >= e for g, e in zip(grid, exact, strict=True))


def test_grid_recursion_is_exact_when_the_numbers_are():
    eps = [Fraction(1, 10), Fraction(1, 5), Fraction(3, 10)]
    lips = [Fraction(2), Fraction(3, 2), None]
    sats = [Fraction(1), Fraction(1, 40), Fraction(1, 2)]
    grid = grid_trajectory(grid_blocks(eps, lips, sats))
    assert [from_grid(b) for b in grid] == bound_trajectory(eps, lips, sats)
    assert grid[-1] == 9 * DENOMINATOR // 8


def test_grid_recursion_refuses_bad_input():
    with pytest.raises(BlockCertError, match="neither"):
        grid_trajectory([GridBlock(1, None, None)])
    with pytest.raises(BlockCertError, match=">= 1"):
        grid_trajectory([GridBlock(1, 1, None)], den=0)
    with pytest.raises(BlockCertError, match="one of each"):
        grid_blocks([Fraction(1)], [Fraction(1), Fraction(2)])
