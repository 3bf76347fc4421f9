import BlockCert.Check

/-!
# Example: SaturationThreeBlocks

A hand-made three-block instance that exercises every branch of the saturated recursion:
block 1 takes L_1 * B_0, block 2 takes the saturation B_1 + a_2 (it is below L_2 * B_1), block 3
claims no Lipschitz constant (-1) and uses its saturation constant only. `bound_eq` pins the exact
value of Lean's recursion; `tests/test_lean_files.py` checks that Python's `bound_trajectory`
gives the same rational.

The per-block local errors ε_k, Lipschitz constants L_k and saturation constants a_k of one
certify run and its claimed global bound B_L, each float rounded outward (up) to an exact
rational; -1 marks a constant that is not claimed for that block. `check_ok` recomputes
B_k = min(L_k * B_(k-1), B_(k-1) + a_k) + ε_k from these numbers in the kernel and compares B_L
with `claimed`; `deviation_le` is the composition theorem for this run. Its hypotheses `herr`,
`hlip` and `hsat` are the per-block claims measured on the Python side (in exact arithmetic of
the surrogate IR); Lean does not re-derive them from the network.
-/

-- Provenance (certificate JSON files and their SHA-256):
--   kind: sound (hand-made numbers)

namespace BlockCert.Examples.SaturationThreeBlocks

open BlockCert

/-- ε_k: max per-token L2 error of each composed block on the evaluated prompts (rounded up). -/
def eps : List Rat := [((1 : Rat) / 10),
    ((1 : Rat) / 5),
    ((3 : Rat) / 10)]

/-- L_k: Lipschitz constant of each composed block on its tube (rounded up; -1: not claimed). -/
def Ls : List Rat := [(2 : Rat),
    ((3 : Rat) / 2),
    (-(1 : Rat))]

/-- a_k: saturation constant of each composed block (rounded up; -1: not claimed). -/
def As : List Rat := [(1 : Rat),
    ((1 : Rat) / 40),
    ((1 : Rat) / 2)]

/-- The claimed global bound B_L. -/
def claimed : Rat := ((9 : Rat) / 8)

theorem num_blocks : eps.length = 3 := rfl

theorem check_ok : checkCertificate eps Ls As claimed = true := by decide +kernel

/-- Given the measured per-block claims, the stitched model ends within `claimed`. -/
theorem deviation_le {α : Type} (D : Dist α) (f g : Nat → α → α) (x0 : α)
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

/-- Lean's recursion on these lists, evaluated by the kernel: B_3 = 9/8. -/
theorem bound_eq : bound (nth eps) (nth Ls) (nth As) 3 = ((9 : Rat) / 8) := by
  decide +kernel

end BlockCert.Examples.SaturationThreeBlocks
