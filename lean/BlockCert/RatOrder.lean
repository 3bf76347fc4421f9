/-!
# Order facts about `Rat` used by the composition proof

Core Lean ships `Rat` with its order lemmas in `Init/Data/Rat/Lemmas.lean` but, unlike Mathlib,
without a general `mul_le_mul_of_nonneg_left` for it. The few facts needed here are proved from
core lemmas whose names and argument forms were checked in the Lean 4 sources (see
`lean/README.md`). Where core has changed the implicitness of a lemma between releases, the
proof tries each form with `first`, so the file does not depend on which one v4.35.0 has.
-/

namespace BlockCert

/-- `a ≤ a`. -/
theorem rat_le_refl (a : Rat) : a ≤ a := by
  first
  | exact Rat.le_refl
  | exact Rat.le_refl a
  | exact Rat.le_total.elim id id

/-- An equality gives `≤`. -/
theorem rat_le_of_eq {a b : Rat} (h : a = b) : a ≤ b := by
  subst h
  exact rat_le_refl a

/-- Adding two inequalities: `a ≤ b` and `c ≤ d` give `a + c ≤ b + d`. -/
theorem rat_add_le_add {a b c d : Rat} (hab : a ≤ b) (hcd : c ≤ d) : a + c ≤ b + d := by
  first
  | exact Rat.le_trans (Rat.add_le_add_right.mpr hab) (Rat.add_le_add_left.mpr hcd)
  | exact Rat.le_trans (Rat.add_le_add_right hab c) (Rat.add_le_add_left hcd b)

/-- Multiplying on the left by a nonnegative number keeps `≤`:
`c * b - c * a = c * (b - a) ≥ 0`. -/
theorem rat_mul_le_mul_of_nonneg_left {a b c : Rat} (h : a ≤ b) (hc : 0 ≤ c) :
    c * a ≤ c * b := by
  have hd : 0 ≤ c * (b - a) := Rat.mul_nonneg hc ((Rat.le_iff_sub_nonneg a b).mp h)
  rw [Rat.sub_eq_add_neg, Rat.mul_add, Rat.mul_neg] at hd
  rw [Rat.le_iff_sub_nonneg, Rat.sub_eq_add_neg]
  exact hd

end BlockCert
