import BlockCert.RatOrder

/-!
# The global deviation bound, with saturation

Block k (0-based here, block k+1 of the paper) has local error `eps k`, a Lipschitz constant
`L k` on its tube and a saturation constant `a k` (its residual update moves by at most `a k`:
dist (g y) (g x) ≤ dist y x + a k). The bound is the recursion

  B 0 = 0,   B (k+1) = min (L k * B k) (B k + a k) + eps k.

A negative `L k` or `a k` means that constant is not claimed for block k: the step then uses the
other one only (`stepCore`). The checker (`BlockCert.Check`) requires, for every block, that at
least one of the two is claimed. With saturation the bound has no product closed form; it never
exceeds B k + a k + eps k, so it stays finite whatever the Lipschitz constants are.
-/

namespace BlockCert

/-- The smaller of two rationals, by a decidable comparison (evaluable by the kernel). -/
def rmin (a b : Rat) : Rat := if a ≤ b then a else b

/-- A lower bound of both arguments is a lower bound of their minimum. -/
theorem le_rmin {a b c : Rat} (ha : c ≤ a) (hb : c ≤ b) : c ≤ rmin a b := by
  unfold rmin
  by_cases h : a ≤ b
  · rw [if_pos h]
    exact ha
  · rw [if_neg h]
    exact hb

/-- How far the surrogate's outputs can be apart when its inputs are within B:
min (L * B) (B + a) when both are claimed (nonnegative), else the claimed one. -/
def stepCore (L a B : Rat) : Rat :=
  if 0 ≤ L then (if 0 ≤ a then rmin (L * B) (B + a) else L * B) else B + a

/-- One block: B ↦ stepCore L a B + e. -/
def stepBound (L a e B : Rat) : Rat := stepCore L a B + e

/-- B 0 = 0, B (k+1) = stepBound (L k) (a k) (eps k) (B k). -/
def bound (eps L a : Nat → Rat) : Nat → Rat
  | 0 => 0
  | k + 1 => stepBound (L k) (a k) (eps k) (bound eps L a k)

theorem bound_zero (eps L a : Nat → Rat) : bound eps L a 0 = 0 := rfl

theorem bound_succ (eps L a : Nat → Rat) (k : Nat) :
    bound eps L a (k + 1) = stepBound (L k) (a k) (eps k) (bound eps L a k) := rfl

/-- If the inputs are within d ≤ B, and the outputs' distance `D` is at most L * d (when L is
claimed) and at most d + a (when a is claimed), with one of them claimed, then D ≤ stepCore. -/
theorem le_stepCore {D d B L a : Rat} (hd : d ≤ B) (hlip : 0 ≤ L → D ≤ L * d)
    (hsat : 0 ≤ a → D ≤ d + a) (hok : 0 ≤ L ∨ 0 ≤ a) : D ≤ stepCore L a B := by
  unfold stepCore
  by_cases hL : 0 ≤ L
  · rw [if_pos hL]
    have h1 : D ≤ L * B := Rat.le_trans (hlip hL) (rat_mul_le_mul_of_nonneg_left hd hL)
    by_cases ha : 0 ≤ a
    · rw [if_pos ha]
      exact le_rmin h1 (Rat.le_trans (hsat ha) (rat_add_le_add hd (rat_le_refl a)))
    · rw [if_neg ha]
      exact h1
  · rw [if_neg hL]
    exact Rat.le_trans (hsat (hok.resolve_left hL)) (rat_add_le_add hd (rat_le_refl a))

end BlockCert
