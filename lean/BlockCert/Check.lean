import BlockCert.Composition

/-!
# Checking one run's numbers

A certify run supplies the lists of ε_k and L_k (rationals rounded outward from the measured
floats) and a claimed global bound. `checkCertificate` is a `Bool` computation by structural
recursion only, so the kernel evaluates it (`by decide +kernel`; the `Rat` operations on
literals reduce to GMP-accelerated `Nat` operations). `checkCertificate_sound` turns `true` into
the facts the composition theorem needs, and `certified_deviation` concludes
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

/-- B ↦ L_k * B + eps_k over the blocks in order, starting from `acc`. A missing L_k counts as
0, as in `nth` (the checker rejects lists of different lengths anyway). -/
def foldBound : Rat → List Rat → List Rat → Rat
  | acc, [], _ => acc
  | acc, e :: es, [] => foldBound (0 * acc + e) es []
  | acc, e :: es, l :: ls => foldBound (l * acc + e) es ls

/-- B_L of the lists, folding over the blocks in order from B_0 = 0. -/
def boundOfLists (eps Ls : List Rat) : Rat :=
  foldBound 0 eps Ls

/-- Equal lengths, every ε and L nonnegative, and B_L ≤ claimed, computed exactly. -/
def checkCertificate (eps Ls : List Rat) (claimed : Rat) : Bool :=
  (eps.length == Ls.length) &&
    (allNonneg eps && (allNonneg Ls && decide (boundOfLists eps Ls ≤ claimed)))

/-- The recursion of `bound`, started from `acc` instead of 0. -/
def boundFrom (acc : Rat) (eps L : Nat → Rat) : Nat → Rat
  | 0 => acc
  | k + 1 => L k * boundFrom acc eps L k + eps k

theorem boundFrom_zero_eq_bound (eps L : Nat → Rat) :
    ∀ n, boundFrom 0 eps L n = bound eps L n
  | 0 => rfl
  | n + 1 => by
    show L n * boundFrom 0 eps L n + eps n = L n * bound eps L n + eps n
    rw [boundFrom_zero_eq_bound eps L n]

/-- Running the first block, then the remaining ones from its output. -/
theorem boundFrom_succ_shift (acc : Rat) (eps L : Nat → Rat) :
    ∀ n, boundFrom acc eps L (n + 1) =
      boundFrom (L 0 * acc + eps 0) (fun k => eps (k + 1)) (fun k => L (k + 1)) n
  | 0 => rfl
  | n + 1 => by
    show L (n + 1) * boundFrom acc eps L (n + 1) + eps (n + 1) =
      L (n + 1) * boundFrom (L 0 * acc + eps 0) (fun k => eps (k + 1)) (fun k => L (k + 1)) n +
        eps (n + 1)
    rw [boundFrom_succ_shift acc eps L n]

/-- The fold over the lists is the recursion over their entries. -/
theorem foldBound_eq_boundFrom : ∀ (acc : Rat) (es ls : List Rat),
    foldBound acc es ls = boundFrom acc (nth es) (nth ls) es.length
  | _, [], _ => rfl
  | acc, e :: es, [] =>
    (foldBound_eq_boundFrom (0 * acc + e) es []).trans
      (boundFrom_succ_shift acc (nth (e :: es)) (nth []) es.length).symm
  | acc, e :: es, l :: ls =>
    (foldBound_eq_boundFrom (l * acc + e) es ls).trans
      (boundFrom_succ_shift acc (nth (e :: es)) (nth (l :: ls)) es.length).symm

theorem boundOfLists_eq_bound (eps Ls : List Rat) :
    boundOfLists eps Ls = bound (nth eps) (nth Ls) eps.length :=
  (foldBound_eq_boundFrom 0 eps Ls).trans (boundFrom_zero_eq_bound (nth eps) (nth Ls) eps.length)

/-- `(a && b) = true` gives both. -/
theorem bool_and_eq_true {a b : Bool} (h : (a && b) = true) : a = true ∧ b = true := by
  cases a <;> cases b <;> first | exact ⟨rfl, rfl⟩ | exact absurd h (by decide)

theorem nth_nonneg : ∀ (l : List Rat), allNonneg l = true → ∀ k, 0 ≤ nth l k
  | [], _, _ => rat_le_refl 0
  | x :: xs, h, 0 =>
    of_decide_eq_true (bool_and_eq_true (a := decide (0 ≤ x)) (b := allNonneg xs) h).1
  | x :: xs, h, k + 1 =>
    nth_nonneg xs (bool_and_eq_true (a := decide (0 ≤ x)) (b := allNonneg xs) h).2 k

/-- What a `true` answer of the checker means. -/
theorem checkCertificate_sound {eps Ls : List Rat} {claimed : Rat}
    (h : checkCertificate eps Ls claimed = true) :
    (∀ k, 0 ≤ nth eps k) ∧ (∀ k, 0 ≤ nth Ls k) ∧
      bound (nth eps) (nth Ls) eps.length ≤ claimed :=
  have h0 : ((eps.length == Ls.length) &&
      (allNonneg eps && (allNonneg Ls && decide (boundOfLists eps Ls ≤ claimed)))) = true := h
  have h1 := bool_and_eq_true (bool_and_eq_true h0).2
  have h2 := bool_and_eq_true h1.2
  ⟨nth_nonneg eps h1.1, nth_nonneg Ls h2.1,
    Rat.le_trans (rat_le_of_eq (boundOfLists_eq_bound eps Ls).symm) (of_decide_eq_true h2.2)⟩

/-- One run's theorem: if its numbers pass the checker and the per-block claims measured on the
Python side hold (local error on the teacher input, tube Lipschitz constant, for each of the
`eps.length` blocks), the stitched stream ends within `claimed` of the teacher's. -/
theorem certified_deviation {α : Type} (D : Dist α) (f g : Nat → α → α) (x0 : α)
    (eps Ls : List Rat) (claimed : Rat) (hcheck : checkCertificate eps Ls claimed = true)
    (herr : ∀ k, k < eps.length →
      D.dist (g k (teacher f x0 k)) (f k (teacher f x0 k)) ≤ nth eps k)
    (hlip : ∀ k y, k < eps.length → D.dist y (teacher f x0 k) ≤ bound (nth eps) (nth Ls) k →
      D.dist (g k y) (g k (teacher f x0 k)) ≤ nth Ls k * D.dist y (teacher f x0 k)) :
    D.dist (stitched g x0 eps.length) (teacher f x0 eps.length) ≤ claimed :=
  have h := checkCertificate_sound hcheck
  Rat.le_trans
    (stitched_dist_le_bound_of_le D f g x0 (nth eps) (nth Ls) eps.length (fun k _ => h.2.1 k)
      herr hlip eps.length (Nat.le_refl eps.length))
    h.2.2

end BlockCert
