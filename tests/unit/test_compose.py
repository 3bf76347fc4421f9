"""Outward rational rounding, the exact bound recursion, and the lake runner."""

import math
import random
import struct
from fractions import Fraction
from pathlib import Path

import pytest

from blockcert.compose.bound import bound_trajectory, closed_form_bound
from blockcert.compose.chain import radius_up
from blockcert.compose.rational import round_down, round_up
from blockcert.errors import BlockCertError
from blockcert.prove.lake import run_lake_build

LEAN = Path(__file__).resolve().parents[2] / "lean"
AWKWARD = [
    5e-324,  # smallest subnormal
    math.nextafter(5e-324, 1.0),
    2.2250738585072014e-308,  # smallest normal
    math.nextafter(2.2250738585072014e-308, 0.0),  # largest subnormal
    2.0**-30,
    math.nextafter(2.0**-30, 0.0),
    1.0,
    math.nextafter(1.0, 2.0),
    1.0 - 2.0**-53,  # largest float below 1
    1024.0,
    math.nextafter(1024.0, 0.0),
    1e300,
    1.7976931348623157e308,  # largest finite
    0.1,
    37.8804,
    -3.25,
    -1e-7,
    -5e-324,
    -(1.0 - 2.0**-53),
]


def _decimal_exponent(q: Fraction) -> int:
    e = 0
    q = abs(q)
    while Fraction(10) ** e > q:
        e -= 1
    while Fraction(10) ** (e + 1) <= q:
        e += 1
    return e


def _is_short_decimal(r: Fraction, exact: Fraction, sig_digits: int) -> bool:
    """r = m * 10**(e - sig_digits + 1) with |m| <= 10**sig_digits, e the exponent of `exact`."""
    mantissa = r / Fraction(10) ** (_decimal_exponent(exact) - sig_digits + 1)
    return mantissa.denominator == 1 and abs(mantissa.numerator) <= 10**sig_digits


def _random_floats(n: int, seed: int = 0) -> list[float]:
    """Floats from random bit patterns: every exponent, subnormals and both signs included."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        x = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(x):
            out.append(x)
    return out


@pytest.mark.parametrize("sig_digits", [1, 3, 12, 17])
@pytest.mark.parametrize("x", AWKWARD)
def test_round_up_and_down_bracket_the_exact_float(x, sig_digits):
    exact = Fraction(x)
    up, down = round_up(x, sig_digits), round_down(x, sig_digits)
    assert down <= exact <= up
    tolerance = abs(exact) * Fraction(1, 10 ** (sig_digits - 1))
    assert up - exact < tolerance and exact - down < tolerance
    assert _is_short_decimal(up, exact, sig_digits) and _is_short_decimal(down, exact, sig_digits)


def test_rounding_property_on_random_bit_patterns():
    for x in _random_floats(2000):
        exact = Fraction(x)
        up, down = round_up(x), round_down(x)
        assert down <= exact <= up, x
        assert up - down < 2 * abs(exact) / 10**11, x


def test_rounding_is_exact_when_the_value_fits():
    assert round_up(0.0) == 0 and round_down(0.0) == 0 and round_up(-0.0) == 0
    assert round_up(0.5) == Fraction(1, 2) and round_down(0.5) == Fraction(1, 2)
    assert round_up(3.0) == 3 and round_up(1024.0) == 1024 and round_up(-3.25) == Fraction(-13, 4)
    assert round_up(2.0**-30, 17) > 0
    # the float 0.1 is 0.1000000000000000055511... > 1/10, so rounding up cannot give 1/10
    assert Fraction(0.1) > Fraction(1, 10)
    assert round_up(0.1) == Fraction(100000000001, 10**12)
    assert round_down(0.1) == Fraction(1, 10)


def test_rounding_accepts_exact_fractions():
    exact = Fraction(30886397574753838205339, 1220703125000000000)
    up, down = round_up(exact), round_down(exact)
    assert down <= exact <= up and up - exact < exact / 10**11
    assert _is_short_decimal(up, exact, 12)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_cannot_be_bounded(bad):
    for fn in (round_up, round_down):
        with pytest.raises(BlockCertError, match="not finite"):
            fn(bad)


def test_sig_digits_must_be_positive():
    with pytest.raises(BlockCertError, match="sig_digits"):
        round_up(1.5, 0)


def test_three_block_bound_by_hand():
    eps = [Fraction(1, 10), Fraction(1, 5), Fraction(3, 10)]
    lips = [Fraction(2), Fraction(3, 2), Fraction(5, 4)]
    # B_1 = 2 * 0 + 1/10 = 1/10
    # B_2 = 3/2 * 1/10 + 1/5 = 3/20 + 4/20 = 7/20
    # B_3 = 5/4 * 7/20 + 3/10 = 35/80 + 24/80 = 59/80
    # closed form: 1/10 * (3/2 * 5/4) + 1/5 * 5/4 + 3/10 = 15/80 + 20/80 + 24/80 = 59/80
    assert bound_trajectory(eps, lips) == [0, Fraction(1, 10), Fraction(7, 20), Fraction(59, 80)]
    assert closed_form_bound(eps, lips) == Fraction(59, 80)


def test_closed_form_equals_recursion_on_random_rationals():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(0, 10)
        eps = [Fraction(rng.randint(0, 10**6), rng.randint(1, 10**6)) for _ in range(n)]
        lips = [Fraction(rng.randint(0, 5 * 10**6), rng.randint(1, 10**6)) for _ in range(n)]
        trajectory = bound_trajectory(eps, lips)
        assert len(trajectory) == n + 1 and trajectory[0] == 0
        assert trajectory[-1] == closed_form_bound(eps, lips)
        assert all(b >= 0 for b in trajectory)


def test_saturated_recursion_by_hand():
    eps = [Fraction(1, 10), Fraction(1, 5), Fraction(3, 10)]
    lips = [Fraction(2), Fraction(3, 2), None]
    sats = [Fraction(1), Fraction(1, 40), Fraction(1, 2)]
    # B_1 = min(2 * 0, 0 + 1) + 1/10 = 1/10
    # B_2 = min(3/2 * 1/10, 1/10 + 1/40) + 1/5 = 1/8 + 1/5 = 13/40
    # B_3 = (no L) 13/40 + 1/2 + 3/10 = 9/8
    assert bound_trajectory(eps, lips, sats) == [
        0,
        Fraction(1, 10),
        Fraction(13, 40),
        Fraction(9, 8),
    ]
    # saturation never increases the bound, and never leaves it unbounded
    assert (
        bound_trajectory(eps, [Fraction(2), Fraction(3, 2), Fraction(10**9)], sats)[-1]
        <= (bound_trajectory(eps, [Fraction(2), Fraction(3, 2), Fraction(10**9)])[-1])
    )


def test_a_block_needs_some_constant():
    with pytest.raises(BlockCertError, match="neither"):
        bound_trajectory([Fraction(1)], [None], [None])


def test_bound_of_no_blocks_is_zero():
    assert bound_trajectory([], []) == [0] and closed_form_bound([], []) == 0


def test_bound_needs_one_constant_per_block():
    with pytest.raises(BlockCertError, match="2 local errors but 1 Lipschitz"):
        bound_trajectory([Fraction(1), Fraction(2)], [Fraction(1)])


def test_lake_is_skipped_without_a_toolchain(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = run_lake_build(LEAN)
    assert result.status == "skipped" and result.toolchain is None
    assert "NOT kernel-checked" in result.message
    assert "elan-init.sh" in result.message and "lake build" in result.message


def _fake_lake(tmp_path: Path, body: str, monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    lake = bin_dir / "lake"
    lake.write_text(f"#!/bin/sh\n{body}\n")
    lake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="needs a POSIX shell")
@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("echo 'Build completed successfully.'; exit 0", "checked"),
        ("echo 'error: unknown identifier'; exit 1", "failed"),
        ("echo \"warning: declaration uses 'sorry'\"; exit 0", "failed"),
    ],
)
def test_lake_status_follows_the_build(tmp_path, monkeypatch, body, status):
    _fake_lake(tmp_path, body, monkeypatch)
    result = run_lake_build(LEAN, timeout_s=60)
    assert result.status == status, result.message
    if status != "checked":
        assert "NOT" in result.message or "failed" in result.message


def test_tube_radius_is_the_smallest_float_at_or_above_the_exact_bound():
    for q in (Fraction(1, 3), Fraction(2, 3), Fraction(10**20 + 1, 7), Fraction(0), Fraction(5)):
        r = radius_up(q)
        assert Fraction(r) >= q > Fraction(math.nextafter(r, -math.inf))
