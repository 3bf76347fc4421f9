import BlockCert.Bound

/-!
# Lipschitz composition of blockwise errors, with saturation

Teacher blocks `f k` and surrogate blocks `g k` act on a type `α` with a distance valued in ℚ.
From the same start `x0`, the teacher stream is h (k+1) = f k (h k) and the stitched stream is
s (k+1) = g k (s k). If each surrogate is within `eps k` of its teacher block on the teacher
input and, on the tube of radius `bound eps L a k` around that input, is `L k`-Lipschitz
towards it (when `L k` is claimed, i.e. 0 ≤ L k) and moves by at most the input distance plus
`a k` (when 0 ≤ a k), then dist (s n) (h n) ≤ bound eps L a n (`stitched_dist_le_bound_of_le`).

The proof is one triangle inequality per block (`bound_step_le`):
dist (g s) (f h) ≤ dist (g s) (g h) + dist (g h) (f h) ≤ min (L * B) (B + a) + eps.
Every hypothesis is needed only for the blocks k < n.
-/

namespace BlockCert

/-- A distance valued in ℚ. Its laws are fields of the structure, so they are hypotheses of
every theorem that uses a distance and nothing is postulated globally. -/
structure Dist (α : Type) where
  dist : α → α → Rat
  nonneg : ∀ x y, 0 ≤ dist x y
  symm : ∀ x y, dist x y = dist y x
  triangle : ∀ x y z, dist x z ≤ dist x y + dist y z
  dist_self : ∀ x, dist x x = 0

/-- x 0 = x0, x (k+1) = f k (x k): the stream after k blocks. -/
def trajectory {α : Type} (f : Nat → α → α) (x0 : α) : Nat → α
  | 0 => x0
  | k + 1 => f k (trajectory f x0 k)

/-- The teacher stream: h 0 = x0, h (k+1) = f k (h k). -/
abbrev teacher {α : Type} (f : Nat → α → α) (x0 : α) : Nat → α := trajectory f x0

/-- The stitched stream, every block replaced by its surrogate: s 0 = x0, s (k+1) = g k (s k). -/
abbrev stitched {α : Type} (g : Nat → α → α) (x0 : α) : Nat → α := trajectory g x0

/-- Before any block both streams are x0, so their distance is 0 = bound eps L a 0. -/
theorem stitched_zero_dist_le {α : Type} (D : Dist α) (f g : Nat → α → α) (x0 : α)
    (eps L a : Nat → Rat) : D.dist (stitched g x0 0) (teacher f x0 0) ≤ bound eps L a 0 :=
  rat_le_of_eq (D.dist_self x0)

/-- One block: if the inputs s and t are within B, gk is Lk-Lipschitz towards t (when Lk is
claimed) and moves by at most dist s t + ak (when ak is claimed), one of them is claimed, and
gk is within ek of the teacher block fk at t, then the outputs are within stepBound Lk ak ek B. -/
theorem bound_step_le {α : Type} (D : Dist α) {gk fk : α → α} {s t : α} {Lk ak ek B : Rat}
    (hlip : 0 ≤ Lk → D.dist (gk s) (gk t) ≤ Lk * D.dist s t)
    (hsat : 0 ≤ ak → D.dist (gk s) (gk t) ≤ D.dist s t + ak) (hok : 0 ≤ Lk ∨ 0 ≤ ak)
    (herr : D.dist (gk t) (fk t) ≤ ek) (hprev : D.dist s t ≤ B) :
    D.dist (gk s) (fk t) ≤ stepBound Lk ak ek B :=
  Rat.le_trans (D.triangle (gk s) (gk t) (fk t))
    (rat_add_le_add (le_stepCore hprev hlip hsat hok) herr)

/-- The composition theorem with per-block hypotheses for the blocks before n only. -/
theorem stitched_dist_le_bound_of_le {α : Type} (D : Dist α) (f g : Nat → α → α) (x0 : α)
    (eps L a : Nat → Rat) (n : Nat) (hok : ∀ k, k < n → 0 ≤ L k ∨ 0 ≤ a k)
    (herr : ∀ k, k < n → D.dist (g k (teacher f x0 k)) (f k (teacher f x0 k)) ≤ eps k)
    (hlip : ∀ k y, k < n → 0 ≤ L k → D.dist y (teacher f x0 k) ≤ bound eps L a k →
      D.dist (g k y) (g k (teacher f x0 k)) ≤ L k * D.dist y (teacher f x0 k))
    (hsat : ∀ k y, k < n → 0 ≤ a k → D.dist y (teacher f x0 k) ≤ bound eps L a k →
      D.dist (g k y) (g k (teacher f x0 k)) ≤ D.dist y (teacher f x0 k) + a k) :
    ∀ m, m ≤ n → D.dist (stitched g x0 m) (teacher f x0 m) ≤ bound eps L a m
  | 0, _ => stitched_zero_dist_le D f g x0 eps L a
  | m + 1, hm =>
    have hlt : m < n := hm
    have hprev : D.dist (stitched g x0 m) (teacher f x0 m) ≤ bound eps L a m :=
      stitched_dist_le_bound_of_le D f g x0 eps L a n hok herr hlip hsat m
        (Nat.le_trans (Nat.le_succ m) hm)
    bound_step_le D (gk := g m) (fk := f m) (s := stitched g x0 m) (t := teacher f x0 m)
      (fun hL => hlip m (stitched g x0 m) hlt hL hprev)
      (fun ha => hsat m (stitched g x0 m) hlt ha hprev) (hok m hlt) (herr m hlt) hprev

/-- The composition theorem for every n, with the per-block hypotheses for every block. -/
theorem stitched_dist_le_bound {α : Type} (D : Dist α) (f g : Nat → α → α) (x0 : α)
    (eps L a : Nat → Rat) (hok : ∀ k, 0 ≤ L k ∨ 0 ≤ a k)
    (herr : ∀ k, D.dist (g k (teacher f x0 k)) (f k (teacher f x0 k)) ≤ eps k)
    (hlip : ∀ k y, 0 ≤ L k → D.dist y (teacher f x0 k) ≤ bound eps L a k →
      D.dist (g k y) (g k (teacher f x0 k)) ≤ L k * D.dist y (teacher f x0 k))
    (hsat : ∀ k y, 0 ≤ a k → D.dist y (teacher f x0 k) ≤ bound eps L a k →
      D.dist (g k y) (g k (teacher f x0 k)) ≤ D.dist y (teacher f x0 k) + a k)
    (n : Nat) :
    D.dist (stitched g x0 n) (teacher f x0 n) ≤ bound eps L a n :=
  stitched_dist_le_bound_of_le D f g x0 eps L a n (fun k _ => hok k) (fun k _ => herr k)
    (fun k y _ => hlip k y) (fun k y _ => hsat k y) n (Nat.le_refl n)

end BlockCert
