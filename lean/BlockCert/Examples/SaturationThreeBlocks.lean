prelude
import BlockCert.Check

/-!
# Example: SaturationThreeBlocks

A hand-made three-block instance that exercises every branch of the saturated recursion:
block 1 takes ⌈L_1 * B_0 / den⌉, block 2 takes the saturation B_1 + a_2 (it is below
⌈L_2 * B_1 / den⌉), block 3 claims no Lipschitz constant (`Option.none`) and uses its
saturation constant only. `bound_eq` pins the kernel's value of the recursion;
`tests/test_lipschitz.py` checks that Python's `grid_trajectory` and the exact rational
`bound_trajectory` give the same number (every product here is exact on the grid).

Sound constants: the per-block claims were measured and re-verified on the
Python side.

Every number is a natural n on the grid n / den, rounded up from the measured value: per block
ε_k, L_k and a_k (`Option.none`: not claimed), and the claimed global bound B_L. `check_ok`
makes the kernel recompute B_k = min(⌈L_k * B_(k-1) / den⌉, B_(k-1) + a_k) + ε_k from these
numbers and compare B_L with `claimed`; `deviation_le` is the composition theorem for this run.
Its hypotheses `herr`, `hlip` and `hsat` are the per-block claims; Lean does not re-derive them
from the network.
-/

-- Provenance (certificate JSON files and their SHA-256):
--   source: hand-made numbers
--   kind: sound

namespace BlockCert.Examples.SaturationThreeBlocks

open BlockCert

/-- The grid: a natural n below stands for n / den. -/
def den : Nat := 1000000000000000

/-- Per block `Block.mk ε_k L_k a_k`: ε_k the max per-token L2 error on the evaluated prompts;
L_k: Lipschitz constant of the block on its tube; a_k its saturation constant. -/
def blocks : List Block :=
  List.cons (Block.mk 100000000000000 (Option.some 2000000000000000) (Option.some 1000000000000000)) (
  List.cons (Block.mk 200000000000000 (Option.some 1500000000000000) (Option.some 25000000000000)) (
  List.cons (Block.mk 300000000000000 Option.none (Option.some 500000000000000)) (
  List.nil)))

/-- The claimed global bound B_L, on the grid. -/
def claimed : Nat := 1125000000000000

theorem num_blocks : Eq (length blocks) 3 := rfl

theorem check_ok : Eq (checkCertificate den blocks claimed) Bool.true := rfl

/-- Given the per-block claims, the stitched model ends within claimed / den. -/
theorem deviation_le {V : Type} (Vs : Values den V) {α : Type} (D : Dist Vs α)
    (f g : Nat → α → α) (x0 : α)
    (herr : ∀ k, Nat.lt k (length blocks) →
      Vs.le (D.dist (g k (teacher f x0 k)) (f k (teacher f x0 k))) (Vs.grid (epsOf blocks k)))
    (hlip : ∀ k y l, Nat.lt k (length blocks) → Eq (lipOf blocks k) (Option.some l) →
      Vs.le (D.dist y (teacher f x0 k))
        (Vs.grid (bound den (epsOf blocks) (lipOf blocks) (satOf blocks) k)) →
      Vs.le (D.dist (g k y) (g k (teacher f x0 k))) (Vs.scale l (D.dist y (teacher f x0 k))))
    (hsat : ∀ k y r, Nat.lt k (length blocks) → Eq (satOf blocks k) (Option.some r) →
      Vs.le (D.dist y (teacher f x0 k))
        (Vs.grid (bound den (epsOf blocks) (lipOf blocks) (satOf blocks) k)) →
      Vs.le (D.dist (g k y) (g k (teacher f x0 k)))
        (Vs.add (D.dist y (teacher f x0 k)) (Vs.grid r))) :
    Vs.le (D.dist (stitched g x0 (length blocks)) (teacher f x0 (length blocks)))
      (Vs.grid claimed) :=
  certified_deviation Vs D f g x0 blocks claimed check_ok herr hlip hsat

/-- The kernel's value of the recursion on these blocks: B_3 = 9/8 on the grid. -/
theorem bound_eq : Eq (blocksBound den blocks) 1125000000000000 := rfl

end BlockCert.Examples.SaturationThreeBlocks
