prelude
import BlockCert.Bound

/-!
# Lipschitz composition of blockwise errors, with saturation

Teacher blocks `f k` and surrogate blocks `g k` act on a type `α` with a distance valued in `V`
(`Dist`). From the same start `x0`, the teacher stream is h (k+1) = f k (h k) and the stitched
stream is s (k+1) = g k (s k). If each surrogate is within `eps k / den` of its teacher block on
the teacher input and, on the tube of radius `bound den eps L a k / den` around that input, is
`l / den`-Lipschitz towards it (when `L k = some l`) and moves by at most the input distance plus
`s / den` (when `a k = some s`), then dist (s n) (h n) ≤ bound den eps L a n / den
(`stitched_dist_le_bound_of_le`).

The proof is one triangle inequality per block (`bound_step_le`):
dist (g s) (f h) ≤ dist (g s) (g h) + dist (g h) (f h) ≤ stepCore L a B + eps.
Every hypothesis is needed only for the blocks k < n.
-/

noncomputable section

namespace BlockCert

open Nat

/-- A distance with values in `V`: 0 from a point to itself, and the triangle inequality. -/
structure Dist {den : Nat} {V : Type} (Vs : Values den V) (α : Type) where
  dist : α → α → V
  dist_self : ∀ x, Vs.le (dist x x) (Vs.grid zero)
  triangle : ∀ x y z, Vs.le (dist x z) (Vs.add (dist x y) (dist y z))

/-- x 0 = x0, x (k+1) = f k (x k): the stream after k blocks. -/
def trajectory {α : Type} (f : Nat → α → α) (x0 : α) : Nat → α
  | zero => x0
  | succ k => f k (trajectory f x0 k)

/-- The teacher stream: h 0 = x0, h (k+1) = f k (h k). -/
abbrev teacher {α : Type} (f : Nat → α → α) (x0 : α) : Nat → α := trajectory f x0

/-- The stitched stream, every block replaced by its surrogate: s 0 = x0, s (k+1) = g k (s k). -/
abbrev stitched {α : Type} (g : Nat → α → α) (x0 : α) : Nat → α := trajectory g x0

section
variable {den : Nat} {V : Type} {Vs : Values den V} {α : Type}

/-- One block: if the inputs s and t are within B / den, gk is (l / den)-Lipschitz towards t
(when L = some l) and moves by at most dist s t + s' / den (when a = some s'), one of them is
claimed, and gk is within e / den of the teacher block fk at t, then the outputs are within
stepBound L a e B / den. -/
theorem bound_step_le (D : Dist Vs α) (hden : Nat.le 1 den) {gk fk : α → α} {s t : α}
    {L a : Option Nat} {e B : Nat}
    (hlip : ∀ l, Eq L (Option.some l) → Vs.le (D.dist (gk s) (gk t)) (Vs.scale l (D.dist s t)))
    (hsat : ∀ r, Eq a (Option.some r) →
      Vs.le (D.dist (gk s) (gk t)) (Vs.add (D.dist s t) (Vs.grid r)))
    (hok : Eq (claims L a) Bool.true) (herr : Vs.le (D.dist (gk t) (fk t)) (Vs.grid e))
    (hprev : Vs.le (D.dist s t) (Vs.grid B)) :
    Vs.le (D.dist (gk s) (fk t)) (Vs.grid (stepBound den L a e B)) :=
  Vs.le_trans (D.triangle (gk s) (gk t) (fk t))
    (Vs.le_trans (Vs.add_le_add (le_stepCore Vs hden hprev L a hlip hsat hok) herr)
      (Vs.grid_add (stepCore den L a B) e))

/-- The composition theorem with per-block hypotheses for the blocks before n only. -/
theorem stitched_dist_le_bound_of_le (D : Dist Vs α) (f g : Nat → α → α) (x0 : α)
    (eps : Nat → Nat) (L a : Nat → Option Nat) (n : Nat) (hden : Nat.le 1 den)
    (hok : ∀ k, lt k n → Eq (claims (L k) (a k)) Bool.true)
    (herr : ∀ k, lt k n →
      Vs.le (D.dist (g k (teacher f x0 k)) (f k (teacher f x0 k))) (Vs.grid (eps k)))
    (hlip : ∀ k y l, lt k n → Eq (L k) (Option.some l) →
      Vs.le (D.dist y (teacher f x0 k)) (Vs.grid (bound den eps L a k)) →
      Vs.le (D.dist (g k y) (g k (teacher f x0 k))) (Vs.scale l (D.dist y (teacher f x0 k))))
    (hsat : ∀ k y r, lt k n → Eq (a k) (Option.some r) →
      Vs.le (D.dist y (teacher f x0 k)) (Vs.grid (bound den eps L a k)) →
      Vs.le (D.dist (g k y) (g k (teacher f x0 k)))
        (Vs.add (D.dist y (teacher f x0 k)) (Vs.grid r))) :
    ∀ m, Nat.le m n →
      Vs.le (D.dist (stitched g x0 m) (teacher f x0 m)) (Vs.grid (bound den eps L a m))
  | zero, _ => D.dist_self x0
  | succ m, hm =>
    have hprev : Vs.le (D.dist (stitched g x0 m) (teacher f x0 m))
        (Vs.grid (bound den eps L a m)) :=
      stitched_dist_le_bound_of_le D f g x0 eps L a n hden hok herr hlip hsat m (le_of_lt hm)
    bound_step_le D hden (gk := g m) (fk := f m)
      (fun l hl => hlip m (stitched g x0 m) l hm hl hprev)
      (fun r hr => hsat m (stitched g x0 m) r hm hr hprev) (hok m hm) (herr m hm) hprev

/-- The composition theorem for every n, with the per-block hypotheses for every block. -/
theorem stitched_dist_le_bound (D : Dist Vs α) (f g : Nat → α → α) (x0 : α)
    (eps : Nat → Nat) (L a : Nat → Option Nat) (hden : Nat.le 1 den)
    (hok : ∀ k, Eq (claims (L k) (a k)) Bool.true)
    (herr : ∀ k,
      Vs.le (D.dist (g k (teacher f x0 k)) (f k (teacher f x0 k))) (Vs.grid (eps k)))
    (hlip : ∀ k y l, Eq (L k) (Option.some l) →
      Vs.le (D.dist y (teacher f x0 k)) (Vs.grid (bound den eps L a k)) →
      Vs.le (D.dist (g k y) (g k (teacher f x0 k))) (Vs.scale l (D.dist y (teacher f x0 k))))
    (hsat : ∀ k y r, Eq (a k) (Option.some r) →
      Vs.le (D.dist y (teacher f x0 k)) (Vs.grid (bound den eps L a k)) →
      Vs.le (D.dist (g k y) (g k (teacher f x0 k)))
        (Vs.add (D.dist y (teacher f x0 k)) (Vs.grid r)))
    (n : Nat) :
    Vs.le (D.dist (stitched g x0 n) (teacher f x0 n)) (Vs.grid (bound den eps L a n)) :=
  stitched_dist_le_bound_of_le D f g x0 eps L a n hden (fun k _ => hok k) (fun k _ => herr k)
    (fun k y l _ => hlip k y l) (fun k y r _ => hsat k y r) n (le_refl n)

end

end BlockCert

end
