import BlockCert.Composition

/-!
# Checking one run's numbers

A certificate run supplies lists of ε_k and L_k (rationals rounded outward from the measured
floats) and a claimed global bound. `checkCertificate` is a Bool computation that the kernel
evaluates (`by decide`); `checkCertificate_sound` turns `true` into the facts the composition
theorem needs, and `certified_deviation` concludes dist (stitched) (teacher) ≤ claimed.
-/

namespace BlockCert

/-- The k-th entry of a list, 0 past its end. -/
def nth : List Rat → Nat → Rat
  | [], _ => 0
  | x :: _, 0 => x
  | _ :: xs, k + 1 => nth xs k

def allNonneg : List Rat → Bool
  | [] => true
  | x :: xs => decide (0 ≤ x) && allNonneg xs

theorem nth_nonneg : ∀ (l : List Rat), allNonneg l = true → ∀ k, 0 ≤ nth l k
  | [], _, _ => by
    show (0 : Rat) ≤ 0
    decide
  | x :: _, h, 0 => by
    show 0 ≤ x
    simp only [allNonneg, Bool.and_eq_true, decide_eq_true_eq] at h
    exact h.1
  | _ :: xs, h, k + 1 => by
    show 0 ≤ nth xs k
    simp only [allNonneg, Bool.and_eq_true] at h
    exact nth_nonneg xs h.2 k

/-- Equal lengths, every ε and L nonnegative, and B_L ≤ claimed, computed exactly. -/
def checkCertificate (eps Ls : List Rat) (claimed : Rat) : Bool :=
  (eps.length == Ls.length) && allNonneg eps && allNonneg Ls &&
    decide (bound (nth eps) (nth Ls) eps.length ≤ claimed)

theorem checkCertificate_sound {eps Ls : List Rat} {claimed : Rat}
    (h : checkCertificate eps Ls claimed = true) :
    (∀ k, 0 ≤ nth eps k) ∧ (∀ k, 0 ≤ nth Ls k) ∧
      bound (nth eps) (nth Ls) eps.length ≤ claimed := by
  simp only [checkCertificate, Bool.and_eq_true, decide_eq_true_eq] at h
  exact ⟨nth_nonneg eps h.1.1.2, nth_nonneg Ls h.1.2, h.2⟩

/-- A run whose numbers pass the checker: the stitched model stays within `claimed` of the
teacher, given the measured per-block claims (local error and tube Lipschitz constants). -/
theorem certified_deviation {α : Type} (D : Dist α) (f g : Nat → α → α) (x0 : α)
    (eps Ls : List Rat) (claimed : Rat) (hcheck : checkCertificate eps Ls claimed = true)
    (herr : ∀ k, D.dist (g k (trajectory f x0 k)) (f k (trajectory f x0 k)) ≤ nth eps k)
    (hlip : ∀ k y, D.dist y (trajectory f x0 k) ≤ bound (nth eps) (nth Ls) k →
      D.dist (g k y) (g k (trajectory f x0 k)) ≤ nth Ls k * D.dist y (trajectory f x0 k)) :
    D.dist (trajectory g x0 eps.length) (trajectory f x0 eps.length) ≤ claimed :=
  have h := checkCertificate_sound hcheck
  Rat.le_trans
    (stitched_dist_le_bound D f g x0 (nth eps) (nth Ls) h.2.1 herr hlip eps.length) h.2.2

end BlockCert
