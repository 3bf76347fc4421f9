prelude
import BlockCert.Arith

/-!
# The global deviation bound on a fixed-point grid, with saturation

Numbers are natural numbers on a grid of step 1/den: the natural n stands for n / den. Block k
(0-based here, block k+1 of the paper) has local error `eps k`, optionally a Lipschitz constant
`L k = some l` (the factor l / den) on its tube, and optionally a saturation constant
`a k = some s` (its update moves by at most s / den). The bound is the recursion

  B 0 = 0,   B (k+1) = min (⌈L k * B k / den⌉) (B k + a k) + eps k

over the constants that are claimed (`stepCore`; `none` is "not claimed"). The product is
rounded up, so B k / den is at least the exact rational recursion on the same numbers. The
checker (`BlockCert.Check`) requires, for every block, that at least one constant is claimed.

Distances take values in any type `V` with the laws of `Values den V`: an order, an addition
monotone in both arguments, the grid `grid n` (= n / den) and the scaling `scale l v`
(= (l / den) * v). The real numbers with these operations satisfy every law; the laws are
fields of the structure, so they are hypotheses of the theorems, and nothing is postulated.
-/

noncomputable section

namespace BlockCert

open Nat

/-- The values of a distance: an ordered type with a monotone addition, containing the grid
n ↦ n / den, with a monotone scaling v ↦ (l / den) * v. -/
structure Values (den : Nat) (V : Type) where
  le : V → V → Prop
  add : V → V → V
  /-- `grid n` is n / den. -/
  grid : Nat → V
  /-- `scale l v` is (l / den) * v. -/
  scale : Nat → V → V
  le_trans : ∀ {x y z : V}, le x y → le y z → le x z
  add_le_add : ∀ {x y z w : V}, le x y → le z w → le (add x z) (add y w)
  grid_le : ∀ {m n : Nat}, Nat.le m n → le (grid m) (grid n)
  grid_add : ∀ m n : Nat, le (add (grid m) (grid n)) (grid (Nat.add m n))
  scale_le : ∀ (l : Nat) {x y : V}, le x y → le (scale l x) (scale l y)
  /-- (l / den) * (b / den) ≤ c / den when l * b ≤ den * c. -/
  scale_grid : ∀ l b c : Nat, Nat.le (Nat.mul l b) (Nat.mul den c) → le (scale l (grid b)) (grid c)

/-- ⌈l * b / den⌉: the grid value of (l / den) * (b / den), rounded up. -/
def mulUp (den l b : Nat) : Nat := ceilDiv (Nat.mul l b) den

/-- The smaller of two naturals. -/
def nmin (x y : Nat) : Nat := cond (ble x y) x y

/-- Whether a block claims a Lipschitz or a saturation constant. -/
def claims : Option Nat → Option Nat → Bool
  | Option.some _, _ => Bool.true
  | Option.none, Option.some _ => Bool.true
  | Option.none, Option.none => Bool.false

/-- How far the surrogate's outputs can be apart when its inputs are within B:
min (⌈l * B / den⌉) (B + s) over the claimed constants (0 when none is claimed; the checker
rejects that case). -/
def stepCore (den : Nat) : Option Nat → Option Nat → Nat → Nat
  | Option.some l, Option.some s, b => nmin (mulUp den l b) (Nat.add b s)
  | Option.some l, Option.none, b => mulUp den l b
  | Option.none, Option.some s, b => Nat.add b s
  | Option.none, Option.none, _ => zero

/-- One block: B ↦ stepCore L a B + e. -/
def stepBound (den : Nat) (L a : Option Nat) (e B : Nat) : Nat := Nat.add (stepCore den L a B) e

/-- B 0 = 0, B (k+1) = stepBound (L k) (a k) (eps k) (B k). -/
def bound (den : Nat) (eps : Nat → Nat) (L a : Nat → Option Nat) : Nat → Nat
  | zero => zero
  | succ k => stepBound den (L k) (a k) (eps k) (bound den eps L a k)

theorem bound_zero (den : Nat) (eps : Nat → Nat) (L a : Nat → Option Nat) :
    Eq (bound den eps L a zero) zero := rfl

theorem bound_succ (den : Nat) (eps : Nat → Nat) (L a : Nat → Option Nat) (k : Nat) :
    Eq (bound den eps L a (succ k)) (stepBound den (L k) (a k) (eps k) (bound den eps L a k)) :=
  rfl

section
variable {den : Nat} {V : Type} (Vs : Values den V)

/-- The Lipschitz branch: D ≤ (l / den) * d and d ≤ B / den give D ≤ ⌈l * B / den⌉ / den. -/
theorem le_mulUp (hden : Nat.le 1 den) {D d : V} {B l : Nat} (hd : Vs.le d (Vs.grid B))
    (hlip : Vs.le D (Vs.scale l d)) : Vs.le D (Vs.grid (mulUp den l B)) :=
  Vs.le_trans hlip (Vs.le_trans (Vs.scale_le l hd)
    (Vs.scale_grid l B (mulUp den l B) (le_mul_ceilDiv hden)))

/-- The saturation branch: D ≤ d + s / den and d ≤ B / den give D ≤ (B + s) / den. -/
theorem le_addSat {D d : V} {B s : Nat} (hd : Vs.le d (Vs.grid B))
    (hsat : Vs.le D (Vs.add d (Vs.grid s))) : Vs.le D (Vs.grid (Nat.add B s)) :=
  Vs.le_trans hsat (Vs.le_trans (Vs.add_le_add hd (Vs.grid_le (le_refl s))) (Vs.grid_add B s))

/-- Below both grid values, below their minimum. -/
theorem le_nmin {D : V} {x y : Nat} (hx : Vs.le D (Vs.grid x)) (hy : Vs.le D (Vs.grid y)) :
    Vs.le D (Vs.grid (nmin x y)) :=
  cond_cases (P := fun c => Vs.le D (Vs.grid c)) (ble x y) (fun _ => hx) (fun _ => hy)

/-- If the inputs are within d ≤ B / den, and the outputs' distance D is at most (l / den) * d
when L = some l and at most d + s / den when a = some s, with one of them claimed, then
D ≤ stepCore L a B / den. -/
theorem le_stepCore (hden : Nat.le 1 den) {D d : V} {B : Nat} (hd : Vs.le d (Vs.grid B)) :
    ∀ (L a : Option Nat), (∀ l, Eq L (Option.some l) → Vs.le D (Vs.scale l d)) →
      (∀ s, Eq a (Option.some s) → Vs.le D (Vs.add d (Vs.grid s))) →
      Eq (claims L a) Bool.true → Vs.le D (Vs.grid (stepCore den L a B))
  | Option.some l, Option.some s, hlip, hsat, _ =>
    le_nmin Vs (le_mulUp Vs hden hd (hlip l rfl)) (le_addSat Vs hd (hsat s rfl))
  | Option.some l, Option.none, hlip, _, _ => le_mulUp Vs hden hd (hlip l rfl)
  | Option.none, Option.some s, _, hsat, _ => le_addSat Vs hd (hsat s rfl)
  | Option.none, Option.none, _, _, hok => absurd hok false_ne_true

end

end BlockCert

end
