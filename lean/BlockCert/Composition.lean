import BlockCert.Bound

/-!
# Lipschitz composition of blockwise errors

Teacher blocks `f k` and surrogate blocks `g k` act on a type `α` with a distance valued in ℚ.
From the same start, the teacher trajectory is h (k+1) = f k (h k) and the stitched one
s (k+1) = g k (s k). If each surrogate is within `eps k` of its teacher block on the teacher
input, and is `L k`-Lipschitz on the tube of radius `bound eps L k` around that input, then
dist (s n) (h n) ≤ bound eps L n (`stitched_dist_le_bound`).
-/

namespace BlockCert

/-- A distance valued in ℚ; the axioms are fields, so nothing is assumed globally. -/
structure Dist (α : Type) where
  dist : α → α → Rat
  nonneg : ∀ x y, 0 ≤ dist x y
  symm : ∀ x y, dist x y = dist y x
  triangle : ∀ x y z, dist x z ≤ dist x y + dist y z
  self : ∀ x, dist x x = 0

/-- x 0 = x0, x (k+1) = f k (x k). -/
def trajectory {α : Type} (f : Nat → α → α) (x0 : α) : Nat → α
  | 0 => x0
  | k + 1 => f k (trajectory f x0 k)

theorem add_le_add_of_le {a b c d : Rat} (h₁ : a ≤ b) (h₂ : c ≤ d) : a + c ≤ b + d :=
  Rat.le_trans (Rat.add_le_add_right.mpr h₁) (Rat.add_le_add_left.mpr h₂)

theorem mul_le_mul_of_nonneg_left' {a b c : Rat} (h : a ≤ b) (hc : 0 ≤ c) :
    c * a ≤ c * b := by
  have hd : 0 ≤ c * (b - a) := Rat.mul_nonneg hc ((Rat.le_iff_sub_nonneg a b).mp h)
  rw [Rat.sub_eq_add_neg, Rat.mul_add, Rat.mul_neg] at hd
  rw [Rat.le_iff_sub_nonneg, Rat.sub_eq_add_neg]
  exact hd

/-- One block: dist (g s) (f t) ≤ L * B + eps, by the triangle inequality through g t. -/
theorem dist_step_le {α : Type} (D : Dist α) {gk fk : α → α} {s t : α} {Lk ek B : Rat}
    (hlip : D.dist (gk s) (gk t) ≤ Lk * D.dist s t) (herr : D.dist (gk t) (fk t) ≤ ek)
    (hprev : D.dist s t ≤ B) (hL : 0 ≤ Lk) :
    D.dist (gk s) (fk t) ≤ Lk * B + ek :=
  Rat.le_trans (D.triangle (gk s) (gk t) (fk t))
    (add_le_add_of_le (Rat.le_trans hlip (mul_le_mul_of_nonneg_left' hprev hL)) herr)

theorem stitched_dist_le_bound {α : Type} (D : Dist α) (f g : Nat → α → α) (x0 : α)
    (eps L : Nat → Rat) (hL : ∀ k, 0 ≤ L k)
    (herr : ∀ k, D.dist (g k (trajectory f x0 k)) (f k (trajectory f x0 k)) ≤ eps k)
    (hlip : ∀ k y, D.dist y (trajectory f x0 k) ≤ bound eps L k →
      D.dist (g k y) (g k (trajectory f x0 k)) ≤ L k * D.dist y (trajectory f x0 k))
    (n : Nat) :
    D.dist (trajectory g x0 n) (trajectory f x0 n) ≤ bound eps L n := by
  induction n with
  | zero =>
    show D.dist x0 x0 ≤ 0
    calc D.dist x0 x0 = 0 := D.self x0
      _ ≤ 0 := by decide
  | succ n ih =>
    show D.dist (g n (trajectory g x0 n)) (f n (trajectory f x0 n)) ≤
      L n * bound eps L n + eps n
    exact dist_step_le D (hlip n _ ih) (herr n) ih (hL n)

end BlockCert
