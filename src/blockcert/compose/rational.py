"""Floats to short exact rationals, rounded outward (up for upper bounds).

A float is already an exact binary rational, but one with a huge power-of-two denominator;
Lean instances and reports use `sig_digits` significant decimal digits instead, rounded so that
the rational never understates an upper bound (`round_up`) or overstates a lower one.
"""

from __future__ import annotations

import math
from fractions import Fraction

from blockcert.errors import BlockCertError


def _decimal_exponent(q: Fraction) -> int:
    """e with 10**e <= |q| < 10**(e+1), exactly."""
    q = abs(q)
    e = math.floor(math.log10(q.numerator) - math.log10(q.denominator))
    while Fraction(10) ** e > q:
        e -= 1
    while Fraction(10) ** (e + 1) <= q:
        e += 1
    return e


def _round(x: float | Fraction, sig_digits: int, up: bool) -> Fraction:
    if not isinstance(x, Fraction) and not math.isfinite(x):
        raise BlockCertError(f"cannot bound a non-finite value ({x}) by a rational.")
    if sig_digits < 1:
        raise BlockCertError("sig_digits must be >= 1.")
    q = Fraction(x)  # exact
    if q == 0:
        return q
    scale = Fraction(10) ** (sig_digits - 1 - _decimal_exponent(q))
    scaled = q * scale
    return Fraction(math.ceil(scaled) if up else math.floor(scaled)) / scale


def round_up(x: float | Fraction, sig_digits: int = 12) -> Fraction:
    """Smallest `sig_digits`-digit decimal rational >= x (exactly x when it fits)."""
    return _round(x, sig_digits, up=True)


def round_down(x: float | Fraction, sig_digits: int = 12) -> Fraction:
    """Largest `sig_digits`-digit decimal rational <= x."""
    return _round(x, sig_digits, up=False)
