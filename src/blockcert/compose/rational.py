"""Floats to short exact rationals, rounded outward.

A float is already an exact binary rational, but one with a huge power-of-two denominator.
Reports use `sig_digits` significant decimal digits instead, rounded so that
the rational never understates an upper bound (`round_up`) or overstates a lower one
(`round_down`). Every step is exact `Fraction` arithmetic: no float rounding after `Fraction(x)`.
"""

from __future__ import annotations

import math
from fractions import Fraction

from blockcert.errors import BlockCertError


def _exact(x: float | int | Fraction) -> Fraction:
    if isinstance(x, (int, Fraction)):
        return Fraction(x)
    if not math.isfinite(x):
        raise BlockCertError(
            f"cannot bound {x!r} by a rational: the measured value is not finite; "
            "check the metric or Lipschitz estimate that produced it."
        )
    return Fraction(x)  # exact, subnormals included


def _decimal_exponent(q: Fraction) -> int:
    """e with 10**e <= |q| < 10**(e+1), exactly (the float log only gives the first guess)."""
    q = abs(q)
    e = math.floor(math.log10(q.numerator) - math.log10(q.denominator))
    while Fraction(10) ** e > q:
        e -= 1
    while Fraction(10) ** (e + 1) <= q:
        e += 1
    return e


def _round(x: float | int | Fraction, sig_digits: int, up: bool) -> Fraction:
    if sig_digits < 1:
        raise BlockCertError(f"sig_digits must be >= 1, got {sig_digits}.")
    q = _exact(x)
    if q == 0:
        return q
    # scale so that |q| * scale lies in [10**(sig_digits-1), 10**sig_digits)
    scale = Fraction(10) ** (sig_digits - 1 - _decimal_exponent(q))
    scaled = q * scale
    return Fraction(math.ceil(scaled) if up else math.floor(scaled)) / scale


def round_up(x: float | int | Fraction, sig_digits: int = 12) -> Fraction:
    """Smallest rational with `sig_digits` significant decimal digits that is >= Fraction(x).

    Exact when x already fits (0, 0.5, 1024.0, ...); otherwise above x by less than
    |x| * 10**-(sig_digits-1). NaN and infinities raise BlockCertError.
    """
    return _round(x, sig_digits, up=True)


def round_down(x: float | int | Fraction, sig_digits: int = 12) -> Fraction:
    """Largest rational with `sig_digits` significant decimal digits that is <= Fraction(x)."""
    return _round(x, sig_digits, up=False)
