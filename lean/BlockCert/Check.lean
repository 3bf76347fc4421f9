prelude
import BlockCert.Composition

/-!
# Checking one run's numbers

A certify run supplies its grid denominator `den`, one `Block` per composed block (ε_k, and
L_k and a_k where claimed, each a grid natural rounded up from the measured value) and a
claimed global bound. `checkCertificate` is a `Bool` computation, so the kernel evaluates it
(`theorem check_ok : Eq (checkCertificate den blocks claimed) Bool.true := rfl`): it recomputes
`bound` from the blocks itself (structural recursions on the block count and the list; the
products, sums, comparisons and divisions of numerals are the kernel's GMP operations).
`checkCertificate_sound` turns `true` into the facts the composition theorem needs, and
`certified_deviation` concludes dist (stitched n) (teacher n) ≤ claimed / den from the
per-block claims of the run.
-/

noncomputable section

namespace BlockCert

open Nat

/-- One composed block's numbers on the grid: ε_k, and L_k and a_k when claimed. -/
structure Block where
  eps : Nat
  lip : Option Nat
  sat : Option Nat

/-- The block that stands in past the end of the list (never reached under `k < length`). -/
def Block.none : Block := Block.mk zero Option.none Option.none

def length {β : Type} : List β → Nat
  | List.nil => zero
  | List.cons _ xs => succ (length xs)

/-- The k-th block, `Block.none` past the end. -/
def nth : List Block → Nat → Block
  | List.nil, _ => Block.none
  | List.cons b _, zero => b
  | List.cons _ bs, succ k => nth bs k

def epsOf (bs : List Block) (k : Nat) : Nat := (nth bs k).eps
def lipOf (bs : List Block) (k : Nat) : Option Nat := (nth bs k).lip
def satOf (bs : List Block) (k : Nat) : Option Nat := (nth bs k).sat

/-- B_n of the blocks, n their number. -/
def blocksBound (den : Nat) (bs : List Block) : Nat :=
  bound den (epsOf bs) (lipOf bs) (satOf bs) (length bs)

/-- Every block claims its Lipschitz constant or its saturation constant. -/
def claimsOK : List Block → Bool
  | List.nil => Bool.true
  | List.cons b bs => Bool.and (claims b.lip b.sat) (claimsOK bs)

/-- den ≥ 1, every block claims L_k or a_k, and B_n ≤ claimed, computed exactly on the grid. -/
def checkCertificate (den : Nat) (bs : List Block) (claimed : Nat) : Bool :=
  Bool.and (ble 1 den) (Bool.and (claimsOK bs) (ble (blocksBound den bs) claimed))

/-- What a `true` answer of `claimsOK` means: every block before the end claims L or a. -/
theorem claimsOK_sound : ∀ (bs : List Block), Eq (claimsOK bs) Bool.true →
    ∀ k, lt k (length bs) → Eq (claims (lipOf bs k) (satOf bs k)) Bool.true
  | List.nil, _, k, hk => absurd hk (not_lt_zero k)
  | List.cons _ _, h, zero, _ => and_true_left h
  | List.cons _ bs, h, succ k, hk => claimsOK_sound bs (and_true_right h) k (le_of_succ_le_succ hk)

/-- What a `true` answer of the checker means. -/
theorem checkCertificate_sound {den : Nat} {bs : List Block} {claimed : Nat}
    (h : Eq (checkCertificate den bs claimed) Bool.true) :
    And (Nat.le 1 den) (And (∀ k, lt k (length bs) → Eq (claims (lipOf bs k) (satOf bs k)) Bool.true)
      (Nat.le (blocksBound den bs) claimed)) :=
  And.intro (le_of_ble _ _ (and_true_left h))
    (And.intro (claimsOK_sound bs (and_true_left (and_true_right h)))
      (le_of_ble _ _ (and_true_right (and_true_right h))))

/-- One run's theorem: if its numbers pass the checker and the per-block claims measured on the
Python side hold for each of the `length bs` blocks (local error on the teacher input; on the
tube of radius B_k / den: the Lipschitz constant where claimed, the saturation constant where
claimed), the stitched stream ends within claimed / den of the teacher's. -/
theorem certified_deviation {den : Nat} {V : Type} (Vs : Values den V) {α : Type}
    (D : Dist Vs α) (f g : Nat → α → α) (x0 : α) (bs : List Block) (claimed : Nat)
    (hcheck : Eq (checkCertificate den bs claimed) Bool.true)
    (herr : ∀ k, lt k (length bs) →
      Vs.le (D.dist (g k (teacher f x0 k)) (f k (teacher f x0 k))) (Vs.grid (epsOf bs k)))
    (hlip : ∀ k y l, lt k (length bs) → Eq (lipOf bs k) (Option.some l) →
      Vs.le (D.dist y (teacher f x0 k))
        (Vs.grid (bound den (epsOf bs) (lipOf bs) (satOf bs) k)) →
      Vs.le (D.dist (g k y) (g k (teacher f x0 k))) (Vs.scale l (D.dist y (teacher f x0 k))))
    (hsat : ∀ k y r, lt k (length bs) → Eq (satOf bs k) (Option.some r) →
      Vs.le (D.dist y (teacher f x0 k))
        (Vs.grid (bound den (epsOf bs) (lipOf bs) (satOf bs) k)) →
      Vs.le (D.dist (g k y) (g k (teacher f x0 k)))
        (Vs.add (D.dist y (teacher f x0 k)) (Vs.grid r))) :
    Vs.le (D.dist (stitched g x0 (length bs)) (teacher f x0 (length bs))) (Vs.grid claimed) :=
  have h := checkCertificate_sound hcheck
  Vs.le_trans
    (stitched_dist_le_bound_of_le D f g x0 (epsOf bs) (lipOf bs) (satOf bs) (length bs) h.left
      h.right.left herr hlip hsat (length bs) (le_refl (length bs)))
    (Vs.grid_le h.right.right)

end BlockCert

end
