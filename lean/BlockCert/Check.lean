import BlockCert.Composition

/-!
# Checking one run's numbers

A certify run supplies the lists of ε_k, L_k and a_k (rationals rounded outward from the
measured floats; a negative L_k or a_k means that constant is not claimed for block k) and a
claimed global bound. `checkCertificate` is a `Bool` computation, so the kernel evaluates it
(`by decide +kernel`): it recomputes `bound` from the lists itself (`bound` and `claimsOK` are
structural recursions on the block count; the `Rat` operations on literals reduce to
GMP-accelerated `Nat` operations). `checkCertificate_sound` turns `true` into the facts the
composition theorem needs, and `certified_deviation` concludes
dist (stitched n) (teacher n) ≤ claimed from the per-block claims of the run.
-/

namespace BlockCert

/-- The k-th entry of a list, 0 past its end. -/
def nth : List Rat → Nat → Rat
  | [], _ => 0
  | x :: _, 0 => x
  | _ :: xs, k + 1 => nth xs k

/-- Every entry is ≥ 0. -/
def allNonneg : List Rat → Bool
  | [] => true
  | x :: xs => decide (0 ≤ x) && allNonneg xs

/-- Each of the first n blocks claims its Lipschitz constant or its saturation constant. -/
def claimsOK (L a : Nat → Rat) : Nat → Bool
  | 0 => true
  | k + 1 => claimsOK L a k && (decide (0 ≤ L k) || decide (0 ≤ a k))

/-- Equal lengths, every ε ≥ 0, every block claims L_k or a_k, and B_n ≤ claimed (n the number
of blocks), computed exactly. -/
def checkCertificate (eps Ls As : List Rat) (claimed : Rat) : Bool :=
  (eps.length == Ls.length) && ((eps.length == As.length) && (allNonneg eps &&
    (claimsOK (nth Ls) (nth As) eps.length &&
      decide (bound (nth eps) (nth Ls) (nth As) eps.length ≤ claimed))))

/-- `(a && b) = true` gives both. -/
theorem bool_and_eq_true {a b : Bool} (h : (a && b) = true) : a = true ∧ b = true := by
  cases a <;> cases b <;> first | exact ⟨rfl, rfl⟩ | exact absurd h (by decide)

/-- `(a || b) = true` gives one of them. -/
theorem bool_or_eq_true {a b : Bool} (h : (a || b) = true) : a = true ∨ b = true := by
  cases a <;> cases b <;> first | exact Or.inl rfl | exact Or.inr rfl | exact absurd h (by decide)

theorem nth_nonneg : ∀ (l : List Rat), allNonneg l = true → ∀ k, 0 ≤ nth l k
  | [], _, _ => rat_le_refl 0
  | x :: xs, h, 0 =>
    of_decide_eq_true (bool_and_eq_true (a := decide (0 ≤ x)) (b := allNonneg xs) h).1
  | x :: xs, h, k + 1 =>
    nth_nonneg xs (bool_and_eq_true (a := decide (0 ≤ x)) (b := allNonneg xs) h).2 k

/-- What a `true` answer of `claimsOK` means: every block before n claims L or a. -/
theorem claimsOK_sound {L a : Nat → Rat} :
    ∀ n, claimsOK L a n = true → ∀ k, k < n → (0 ≤ L k ∨ 0 ≤ a k)
  | 0, _, k, hk => absurd hk (Nat.not_lt_zero k)
  | n + 1, h, k, hk =>
    have h2 := bool_and_eq_true (a := claimsOK L a n)
      (b := decide (0 ≤ L n) || decide (0 ≤ a n)) h
    match Nat.eq_or_lt_of_le (Nat.le_of_lt_succ hk) with
    | Or.inl heq => by
      rw [heq]
      exact (bool_or_eq_true h2.2).elim (fun hl => Or.inl (of_decide_eq_true hl))
        (fun ha => Or.inr (of_decide_eq_true ha))
    | Or.inr hlt => claimsOK_sound n h2.1 k hlt

/-- What a `true` answer of the checker means. -/
theorem checkCertificate_sound {eps Ls As : List Rat} {claimed : Rat}
    (h : checkCertificate eps Ls As claimed = true) :
    (∀ k, 0 ≤ nth eps k) ∧ (∀ k, k < eps.length → (0 ≤ nth Ls k ∨ 0 ≤ nth As k)) ∧
      bound (nth eps) (nth Ls) (nth As) eps.length ≤ claimed :=
  have h0 : ((eps.length == Ls.length) && ((eps.length == As.length) && (allNonneg eps &&
      (claimsOK (nth Ls) (nth As) eps.length &&
        decide (bound (nth eps) (nth Ls) (nth As) eps.length ≤ claimed))))) = true := h
  have h1 := bool_and_eq_true (bool_and_eq_true h0).2
  have h2 := bool_and_eq_true h1.2
  have h3 := bool_and_eq_true h2.2
  ⟨nth_nonneg eps h2.1, claimsOK_sound eps.length h3.1, of_decide_eq_true h3.2⟩

/-- One run's theorem: if its numbers pass the checker and the per-block claims measured on the
Python side hold for each of the `eps.length` blocks (local error on the teacher input; on the
tube of radius B_k: the Lipschitz constant where claimed, the saturation constant where
claimed), the stitched stream ends within `claimed` of the teacher's. -/
theorem certified_deviation {α : Type} (D : Dist α) (f g : Nat → α → α) (x0 : α)
    (eps Ls As : List Rat) (claimed : Rat) (hcheck : checkCertificate eps Ls As claimed = true)
    (herr : ∀ k, k < eps.length →
      D.dist (g k (teacher f x0 k)) (f k (teacher f x0 k)) ≤ nth eps k)
    (hlip : ∀ k y, k < eps.length → 0 ≤ nth Ls k →
      D.dist y (teacher f x0 k) ≤ bound (nth eps) (nth Ls) (nth As) k →
      D.dist (g k y) (g k (teacher f x0 k)) ≤ nth Ls k * D.dist y (teacher f x0 k))
    (hsat : ∀ k y, k < eps.length → 0 ≤ nth As k →
      D.dist y (teacher f x0 k) ≤ bound (nth eps) (nth Ls) (nth As) k →
      D.dist (g k y) (g k (teacher f x0 k)) ≤ D.dist y (teacher f x0 k) + nth As k) :
    D.dist (stitched g x0 eps.length) (teacher f x0 eps.length) ≤ claimed :=
  have h := checkCertificate_sound hcheck
  Rat.le_trans
    (stitched_dist_le_bound_of_le D f g x0 (nth eps) (nth Ls) (nth As) eps.length h.2.1
      herr hlip hsat eps.length (Nat.le_refl eps.length))
    h.2.2

end BlockCert
