"""Lean instance of one certify run: its ε_k, L_k, a_k and claimed bound on the fixed-point grid.

Every constant is rounded up onto the grid n / DENOMINATOR (compose.grid). The module proves
`checkCertificate den blocks claimed = true` by kernel evaluation (`rfl`: the kernel recomputes
B_L = min(⌈L_k * B_(k-1) / den⌉, B_(k-1) + a_k) + ε_k from the numbers; the JSON is not trusted)
and instantiates `BlockCert.certified_deviation`, whose remaining hypotheses are the per-block
claims measured on the Python side. The claimed bound written is the larger of the report's
claim and the grid recursion's B_L, so the kernel accepts it.

Labels fail closed: only provenance kind `sound` gets the theorem name `deviation_le` and the
wording of a guarantee; any other kind (empirical, missing, unknown) gets
`deviation_le_empirical`, and every docstring says the constants are empirical. Text that comes
from certificates (header, provenance) is escaped so that it cannot end its comment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from blockcert.atomic import write_text_atomic
from blockcert.compose.bound import bound_trajectory
from blockcert.compose.grid import DENOMINATOR, GridBlock, grid_blocks, grid_trajectory, to_grid
from blockcert.errors import BlockCertError

CERTIFICATES_DIR = Path("BlockCert") / "Certificates"
_HEX = re.compile(r"[0-9a-f]{16,}")


@dataclass(frozen=True)
class LeanInstance:
    text: str
    theorem: str  # deviation_le or deviation_le_empirical
    den: int
    claimed: int  # on the grid: the theorem bounds the deviation by claimed / den

    @property
    def bound(self) -> Fraction:
        """The bound the theorem states, claimed / den."""
        return Fraction(self.claimed, self.den)

    def bound_text(self) -> str:
        """claimed / den as an exact decimal (den is a power of ten)."""
        digits = len(str(self.den)) - 1
        whole, frac = divmod(self.claimed, self.den)
        return f"{whole}.{frac:0{digits}d}".rstrip("0").rstrip(".") if digits else str(whole)


def module_name(cert_hash: str) -> str:
    """`C_<first 16 hex digits of the hash>`, the module's last name component."""
    if not _HEX.fullmatch(cert_hash.lower()):
        raise BlockCertError(
            f"certificate hash {cert_hash!r} is not a hex digest of at least 16 digits; pass the "
            "SHA-256 hex digest of the composed certificates."
        )
    return f"C_{cert_hash[:16].lower()}"


def comment_text(text: object) -> str:
    """Certificate-controlled text made safe inside a Lean comment: one line, printable, and no
    `/-` or `-/` (block comments nest in Lean, so either could end or reopen one)."""
    printable = "".join(c if c.isprintable() else " " for c in str(text))
    line = " ".join(printable.split())
    while "/-" in line or "-/" in line:
        line = line.replace("/-", "/ -").replace("-/", "- /")
    return line


def _option(value: int | None) -> str:
    return "Option.none" if value is None else f"(Option.some {value})"


def _lean_blocks(blocks: list[GridBlock]) -> str:
    rows = [f"  List.cons (Block.mk {b.eps} {_option(b.lip)} {_option(b.sat)}) (" for b in blocks]
    return "\n".join([*rows, "  List.nil" + ")" * len(blocks)])


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


def _wording(sound: bool) -> dict[str, str]:
    """Docstrings: a guarantee only for sound constants, EMPIRICAL everywhere else."""
    if sound:
        return {
            "kind": (
                "Sound constants: the per-block claims were measured and re-verified on the\n"
                "Python side."
            ),
            "lip": "L_k: Lipschitz constant of the block on its tube",
            "claim": "Given the per-block claims, the stitched model ends within claimed / den.",
            "den": "The grid: a natural n below stands for n / den.",
            "claimed": "The claimed global bound B_L, on the grid.",
        }
    return {
        "kind": (
            "EMPIRICAL constants: the L_k are lower estimates from gradient ascent, so `hlip` is\n"
            "not known to hold and the theorem is not a guarantee."
        ),
        "lip": "L_k: EMPIRICAL Lipschitz estimate of the block (a lower estimate, not a bound)",
        "claim": (
            "EMPIRICAL: the L_k are lower estimates from gradient ascent, so `hlip` is not known "
            "to hold and this is not a guarantee. IF the per-block claims held, the stitched "
            "model would end within claimed / den."
        ),
        "den": "The grid of this EMPIRICAL instance: a natural n below stands for n / den.",
        "claimed": "The claimed global bound B_L of the EMPIRICAL chain, on the grid.",
    }


_HYPOTHESES = """    (herr : ∀ k, Nat.lt k (length blocks) →
      Vs.le (D.dist (g k (teacher f x0 k)) (f k (teacher f x0 k))) (Vs.grid (epsOf blocks k)))
    (hlip : ∀ k y l, Nat.lt k (length blocks) → Eq (lipOf blocks k) (Option.some l) →
      Vs.le (D.dist y (teacher f x0 k))
        (Vs.grid (bound den (epsOf blocks) (lipOf blocks) (satOf blocks) k)) →
      Vs.le (D.dist (g k y) (g k (teacher f x0 k))) (Vs.scale l (D.dist y (teacher f x0 k))))
    (hsat : ∀ k y r, Nat.lt k (length blocks) → Eq (satOf blocks k) (Option.some r) →
      Vs.le (D.dist y (teacher f x0 k))
        (Vs.grid (bound den (epsOf blocks) (lipOf blocks) (satOf blocks) k)) →
      Vs.le (D.dist (g k y) (g k (teacher f x0 k)))
        (Vs.add (D.dist y (teacher f x0 k)) (Vs.grid r))) :"""


def render_lean_module(
    namespace: str,
    header: str,
    eps: list[Fraction],
    lips: list[Fraction | None],
    claimed: Fraction,
    provenance: dict[str, str],
    saturation: list[Fraction | None] | None = None,
) -> LeanInstance:
    """The Lean module `namespace` (e.g. BlockCert.Certificates.C_0123456789abcdef).

    lips[k] / saturation[k] = None: that constant is not claimed for block k (`Option.none`).
    saturation=None: no block claims one (the plain recursion B_k = ⌈L_k * B_(k-1)⌉ + ε_k).
    """
    _validate(eps, lips, saturation, claimed)
    blocks = grid_blocks(eps, lips, saturation)
    # the grid recursion may exceed the exact one by its rounding: claim whichever is larger
    claimed_grid = max(to_grid(claimed), grid_trajectory(blocks)[-1])
    sound = str(provenance.get("kind", "")).strip() == "sound"
    theorem = "deviation_le" if sound else "deviation_le_empirical"
    words = _wording(sound)
    header_lines = "\n".join(comment_text(line) for line in str(header).splitlines())
    provenance_lines = "\n".join(
        f"--   {comment_text(key)}: {comment_text(value)}" for key, value in provenance.items()
    )
    text = f"""prelude
import BlockCert.Check

/-!
{header_lines}

{words["kind"]}

Every number is a natural n on the grid n / den, rounded up from the measured value: per block
ε_k, L_k and a_k (`Option.none`: not claimed), and the claimed global bound B_L. `check_ok`
makes the kernel recompute B_k = min(⌈L_k * B_(k-1) / den⌉, B_(k-1) + a_k) + ε_k from these
numbers and compare B_L with `claimed`; `{theorem}` is the composition theorem for this run.
Its hypotheses `herr`, `hlip` and `hsat` are the per-block claims; Lean does not re-derive them
from the network.
-/

-- Provenance (certificate JSON files and their SHA-256):
{provenance_lines}

namespace {namespace}

open BlockCert

/-- {words["den"]} -/
def den : Nat := {DENOMINATOR}

/-- Per block `Block.mk ε_k L_k a_k`: ε_k the max per-token L2 error on the evaluated prompts;
{words["lip"]}; a_k its saturation constant. -/
def blocks : List Block :=
{_lean_blocks(blocks)}

/-- {words["claimed"]} -/
def claimed : Nat := {claimed_grid}

theorem num_blocks : Eq (length blocks) {len(blocks)} := rfl

theorem check_ok : Eq (checkCertificate den blocks claimed) Bool.true := rfl

/-- {words["claim"]} -/
theorem {theorem} {{V : Type}} (Vs : Values den V) {{α : Type}} (D : Dist Vs α)
    (f g : Nat → α → α) (x0 : α)
{_HYPOTHESES}
    Vs.le (D.dist (stitched g x0 (length blocks)) (teacher f x0 (length blocks)))
      (Vs.grid claimed) :=
  certified_deviation Vs D f g x0 blocks claimed check_ok herr hlip hsat

end {namespace}
"""
    return LeanInstance(text, theorem, DENOMINATOR, claimed_grid)


def render_lean_instance(
    cert_hash: str,
    eps: list[Fraction],
    lips: list[Fraction | None],
    claimed: Fraction,
    provenance: dict[str, str],
    saturation: list[Fraction | None] | None = None,
) -> LeanInstance:
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
) -> tuple[Path, LeanInstance]:
    """Write lean/BlockCert/Certificates/C_<hash16>.lean atomically: (its path, the instance)."""
    instance = render_lean_instance(cert_hash, eps, lips, claimed, provenance, saturation)
    path = Path(lean_root) / CERTIFICATES_DIR / f"{module_name(cert_hash)}.lean"
    return write_text_atomic(path, instance.text), instance
