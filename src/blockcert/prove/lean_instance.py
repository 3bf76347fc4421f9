"""Lean instance of one certify run: its ε_k, L_k, a_k and claimed bound as exact rationals.

The module proves `checkCertificate eps Ls As claimed = true` by kernel evaluation (Lean
recomputes B_L = min(L_k * B_(k-1), B_(k-1) + a_k) + ε_k from the numbers; the JSON is not
trusted) and instantiates `BlockCert.certified_deviation`, whose remaining hypotheses are the
per-block claims measured on the Python side (local error on the teacher input; Lipschitz and
saturation constants on the tube). An unclaimed constant (None) is written as -1. When the run's
constants are empirical (provenance kind `empirical`), the theorem is named
`deviation_le_empirical` and its docstring says that its hypotheses are not known to hold.
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

from blockcert.atomic import write_text_atomic
from blockcert.compose.bound import bound_trajectory, lean_constant
from blockcert.compose.rational import lean_rat_literal
from blockcert.errors import BlockCertError

CERTIFICATES_DIR = Path("BlockCert") / "Certificates"
_HEX = re.compile(r"[0-9a-f]{16,}")


def module_name(cert_hash: str) -> str:
    """`C_<first 16 hex digits of the hash>`, the module's last name component."""
    if not _HEX.fullmatch(cert_hash.lower()):
        raise BlockCertError(
            f"certificate hash {cert_hash!r} is not a hex digest of at least 16 digits; pass the "
            "SHA-256 hex digest of the composed certificates."
        )
    return f"C_{cert_hash[:16].lower()}"


def _lean_list(values: list[Fraction]) -> str:
    return "[" + ",\n    ".join(lean_rat_literal(v) for v in values) + "]"


def _comment_line(text: str) -> str:
    # a line comment cannot be closed early, unlike a block comment; only newlines need care
    return " ".join(str(text).split())


def _validate(
    eps: list[Fraction],
    lips: list[Fraction | None],
    sats: list[Fraction | None] | None,
    claimed: Fraction,
) -> None:
    """Refuse numbers the Lean checker would reject, so no failing instance is ever written."""
    if len(eps) != len(lips):
        raise BlockCertError(f"{len(eps)} eps values but {len(lips)} Lipschitz constants.")
    if sats is not None and len(sats) != len(eps):
        raise BlockCertError(f"{len(eps)} eps values but {len(sats)} saturation constants.")
    for name, values in (("eps", eps), ("Lipschitz constant", lips), ("saturation", sats or [])):
        negative = [k for k, v in enumerate(values) if v is not None and Fraction(v) < 0]
        if negative:
            raise BlockCertError(f"{name} of block position(s) {negative} is negative.")
    computed = bound_trajectory(eps, lips, sats)[-1]
    if Fraction(claimed) < computed:
        raise BlockCertError(
            f"claimed bound {Fraction(claimed)} is below the exact B_L = {computed}; "
            "claim round_up(B_L) instead."
        )


def render_lean_module(
    namespace: str,
    header: str,
    eps: list[Fraction],
    lips: list[Fraction | None],
    claimed: Fraction,
    provenance: dict[str, str],
    saturation: list[Fraction | None] | None = None,
) -> str:
    """The Lean text for `namespace` (e.g. BlockCert.Certificates.C_0123456789abcdef).

    lips[k] / saturation[k] = None: that constant is not claimed for block k (written as -1).
    saturation=None: no block claims one (the plain recursion B_k = L_k * B_(k-1) + ε_k).
    """
    _validate(eps, lips, saturation, claimed)
    sats = [None] * len(eps) if saturation is None else list(saturation)
    empirical = str(provenance.get("kind", "")).strip() == "empirical"
    provenance_lines = "\n".join(
        f"--   {_comment_line(key)}: {_comment_line(value)}" for key, value in provenance.items()
    )
    theorem = "deviation_le_empirical" if empirical else "deviation_le"
    if empirical:
        claim = (
            "EMPIRICAL: the L_k are lower estimates from gradient ascent, so `hlip` is not known "
            "to hold and this is not a guarantee. IF the per-block claims held, the stitched "
            "model would end within `claimed`."
        )
    else:
        claim = "Given the measured per-block claims, the stitched model ends within `claimed`."
    return f"""import BlockCert.Check

/-!
{header}

The per-block local errors ε_k, Lipschitz constants L_k and saturation constants a_k of one
certify run and its claimed global bound B_L, each float rounded outward (up) to an exact
rational; -1 marks a constant that is not claimed for that block. `check_ok` recomputes
B_k = min(L_k * B_(k-1), B_(k-1) + a_k) + ε_k from these numbers in the kernel and compares B_L
with `claimed`; `{theorem}` is the composition theorem for this run. Its hypotheses `herr`,
`hlip` and `hsat` are the per-block claims measured on the Python side (in exact arithmetic of
the surrogate IR); Lean does not re-derive them from the network.
-/

-- Provenance (certificate JSON files and their SHA-256):
{provenance_lines}

namespace {namespace}

open BlockCert

/-- ε_k: max per-token L2 error of each composed block on the evaluated prompts (rounded up). -/
def eps : List Rat := {_lean_list(eps)}

/-- L_k: Lipschitz constant of each composed block on its tube (rounded up; -1: not claimed). -/
def Ls : List Rat := {_lean_list([lean_constant(v) for v in lips])}

/-- a_k: saturation constant of each composed block (rounded up; -1: not claimed). -/
def As : List Rat := {_lean_list([lean_constant(v) for v in sats])}

/-- The claimed global bound B_L. -/
def claimed : Rat := {lean_rat_literal(claimed)}

theorem num_blocks : eps.length = {len(eps)} := rfl

theorem check_ok : checkCertificate eps Ls As claimed = true := by decide +kernel

/-- {claim} -/
theorem {theorem} {{α : Type}} (D : Dist α) (f g : Nat → α → α) (x0 : α)
    (herr : ∀ k, k < eps.length →
      D.dist (g k (teacher f x0 k)) (f k (teacher f x0 k)) ≤ nth eps k)
    (hlip : ∀ k y, k < eps.length → 0 ≤ nth Ls k →
      D.dist y (teacher f x0 k) ≤ bound (nth eps) (nth Ls) (nth As) k →
      D.dist (g k y) (g k (teacher f x0 k)) ≤ nth Ls k * D.dist y (teacher f x0 k))
    (hsat : ∀ k y, k < eps.length → 0 ≤ nth As k →
      D.dist y (teacher f x0 k) ≤ bound (nth eps) (nth Ls) (nth As) k →
      D.dist (g k y) (g k (teacher f x0 k)) ≤ D.dist y (teacher f x0 k) + nth As k) :
    D.dist (stitched g x0 eps.length) (teacher f x0 eps.length) ≤ claimed :=
  certified_deviation D f g x0 eps Ls As claimed check_ok herr hlip hsat

end {namespace}
"""


def render_lean_instance(
    cert_hash: str,
    eps: list[Fraction],
    lips: list[Fraction | None],
    claimed: Fraction,
    provenance: dict[str, str],
    saturation: list[Fraction | None] | None = None,
) -> str:
    """Module `BlockCert.Certificates.C_<first 16 hex of cert_hash>` for one run."""
    name = module_name(cert_hash)
    header = (
        f"# Certificate instance {name}\n\n"
        f"Generated by certify.py from composed-certificate hash {cert_hash}; do not edit."
    )
    return render_lean_module(
        f"BlockCert.Certificates.{name}", header, eps, lips, claimed, provenance, saturation
    )


def write_lean_instance(
    lean_root: str | Path,
    cert_hash: str,
    eps: list[Fraction],
    lips: list[Fraction | None],
    claimed: Fraction,
    provenance: dict[str, str],
    saturation: list[Fraction | None] | None = None,
) -> Path:
    """Write lean/BlockCert/Certificates/C_<hash16>.lean atomically; returns its path."""
    text = render_lean_instance(cert_hash, eps, lips, claimed, provenance, saturation)
    path = Path(lean_root) / CERTIFICATES_DIR / f"{module_name(cert_hash)}.lean"
    return write_text_atomic(path, text)
