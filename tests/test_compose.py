"""Outward rational rounding, the exact bound recursion, and the generated Lean instance."""

import math
import re
from fractions import Fraction
from pathlib import Path

import pytest

from blockcert.compose.bound import bound_trajectory, closed_form_bound
from blockcert.compose.lake import run_lake_build
from blockcert.compose.lean_instance import lean_rat_literal, render_lean_instance
from blockcert.compose.rational import round_down, round_up
from blockcert.errors import BlockCertError

LEAN = Path(__file__).resolve().parents[1] / "lean"
AWKWARD = [
    5e-324,  # smallest subnormal
    2.2250738585072014e-308,  # smallest normal
    2.0**-30,
    1.0,
    math.nextafter(1.0, 2.0),
    1.0 - 2.0**-53,
    1024.0,
    math.nextafter(1024.0, 0.0),
    1e300,
    0.1,
    37.8804,
    -3.25,
    -1e-7,
]


@pytest.mark.parametrize("x", AWKWARD)
def test_round_up_and_down_bracket_the_exact_float(x):
    exact = Fraction(x)
    up, down = round_up(x), round_down(x)
    assert down <= exact <= up
    assert up - down <= abs(exact) * Fraction(1, 10**10)  # 12 significant digits
    assert len(str(abs(up.numerator)).rstrip("0")) <= 12  # short decimal mantissa


def test_round_up_is_exact_when_the_float_fits():
    assert round_up(0.5) == Fraction(1, 2) and round_up(0.0) == 0
    assert round_up(3.0) == 3 and round_up(1024.0) == 1024


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_cannot_be_bounded(bad):
    with pytest.raises(BlockCertError, match="non-finite"):
        round_up(bad)


def test_three_block_bound_by_hand():
    eps = [Fraction(1, 10), Fraction(1, 5), Fraction(3, 10)]
    lips = [Fraction(2), Fraction(3, 2), Fraction(5, 4)]
    # B1 = 2*0 + 1/10 = 1/10; B2 = 3/2 * 1/10 + 1/5 = 7/20; B3 = 5/4 * 7/20 + 3/10 = 59/80
    assert bound_trajectory(eps, lips) == [0, Fraction(1, 10), Fraction(7, 20), Fraction(59, 80)]
    assert closed_form_bound(eps, lips) == Fraction(59, 80)


def test_closed_form_equals_recursion_on_random_rationals():
    import random

    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(0, 8)
        eps = [Fraction(rng.randint(0, 1000), rng.randint(1, 1000)) for _ in range(n)]
        lips = [Fraction(rng.randint(0, 5000), rng.randint(1, 1000)) for _ in range(n)]
        assert bound_trajectory(eps, lips)[-1] == closed_form_bound(eps, lips)


def test_lean_literals():
    assert lean_rat_literal(Fraction(3)) == "(3 : Rat)"
    assert lean_rat_literal(Fraction(59, 80)) == "((59 : Rat) / 80)"
    assert lean_rat_literal(Fraction(-1, 2)) == "(-((1 : Rat) / 2))"


def test_generated_instance_holds_the_exact_numbers():
    eps = [Fraction(1, 10), Fraction(1, 5), Fraction(3, 10)]
    lips = [Fraction(2), Fraction(3, 2), Fraction(5, 4)]
    text = render_lean_instance("ab" * 32, eps, lips, Fraction(59, 80), {"run": "runs/x"})
    assert "namespace BlockCert.Certificates.C_abababababababab" in text
    assert re.search(r"def eps : List Rat := \[\(\(1 : Rat\) / 10\),\s+\(\(1 : Rat\) / 5\)", text)
    assert "def claimed : Rat := ((59 : Rat) / 80)" in text
    assert "checkCertificate eps lips claimed = true := by decide" in text
    assert "certified_deviation D f g x0 eps lips claimed check_ok herr hlip" in text
    assert "runs/x" in text


def test_lake_is_skipped_without_a_toolchain(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = run_lake_build(LEAN)
    assert result.status.startswith("skipped") and "NOT kernel-checked" in result.message


def test_lean_sources_have_no_escape_hatches():
    forbidden = re.compile(r"\bsorry\b|^\s*axiom\b|\bnative_decide\b|\badmit\b", re.MULTILINE)
    files = sorted(LEAN.rglob("*.lean"))
    assert any(f.name == "Composition.lean" for f in files)
    for file in files:
        assert not forbidden.search(file.read_text()), file


def test_lean_project_is_pinned_and_core_only():
    assert (LEAN / "lean-toolchain").read_text().strip() == "leanprover/lean4:v4.35.0"
    for file in LEAN.rglob("*.lean"):
        for line in file.read_text().splitlines():
            if line.startswith("import "):
                assert line.split()[1].startswith("BlockCert"), (file, line)
    assert "require" not in (LEAN / "lakefile.toml").read_text()


def test_round_up_of_an_exact_fraction_is_short_and_not_below():
    exact = Fraction(30886397574753838205339, 1220703125000000000)
    up = round_up(exact)
    assert up >= exact and up - exact <= exact / 10**11
    assert len(str(up.numerator).rstrip("0")) <= 12
