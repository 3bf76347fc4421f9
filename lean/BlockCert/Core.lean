prelude
/-!
# The core this development runs on, defined here

Every file of `BlockCert` starts with `prelude`: it imports nothing, not even Lean's `Init`, so the
kernel checks it with no library underneath. This module defines the few types and functions
the rest needs, written from their textbook definitions:

* logic: `Eq`, `HEq`, `True`, `False`, `Not`, `And`, `Or`;
* data: `Bool`, `Nat`, `Option`, `List`, and `OfNat` (so that numerals elaborate);
* arithmetic: `Nat.add`, `Nat.mul`, `Nat.ble` and `Nat.div`.

The names below are not free choices. The elaborator generates terms against `PUnit`, `Unit`,
`Eq`, `Eq.ndrec`, `HEq`, `eq_of_heq`, `heq_of_eq`, `Prod`, `PProd` and `PULift` (structural
recursion, pattern matching, `casesOn`), `OfNat`/`instOfNatNat` (numerals) and
`HAdd`/`instHAdd`/`instAddNat` (its unifier writes `n + 1` for `Nat.succ n`); the code generator
names `lcErased`, `lcAny` and `lcVoid`. The kernel evaluates `Nat.add`, `Nat.mul`, `Nat.ble` and
`Nat.div` on numerals with GMP, by name: it trusts that the definitions here compute addition,
multiplication, `≤` and floor division. `BlockCert.Arith` proves that they do (their recursion
equations, and the floor-division property of `Nat.div`); `lean/README.md` lists this trust.
-/

universe u v w

noncomputable section

set_option bootstrap.inductiveCheckResultingUniverse false in
/-- The one-element type in every universe. -/
inductive PUnit : Sort u where
  | unit : PUnit

/-- The code generator names these types when it compiles structures and instances; `unsafe`,
so no theorem or safe definition can refer to them. -/
unsafe def lcErased : Type := PUnit
unsafe def lcAny : Type := PUnit
unsafe def lcVoid : Type := PUnit

/-- Marks a class argument that instances determine (`HAdd`'s result type). -/
@[reducible] def outParam (α : Sort u) : Sort u := α

def id {α : Sort u} (a : α) : α := a

/-- Equality, with one constructor. -/
inductive Eq {α : Sort u} : α → α → Prop where
  | refl (a : α) : Eq a a

/-- Transport along an equality (the elaborator builds pattern matches with it). -/
abbrev Eq.ndrec.{u1, u2} {α : Sort u2} {a : α} {motive : α → Sort u1} (m : motive a) {b : α}
    (h : Eq a b) : motive b :=
  Eq.rec (motive := fun b _ => motive b) m h

theorem rfl {α : Sort u} {a : α} : Eq a a := Eq.refl a

/-- Substitution, with the equation first so that it fixes `a` and `b` before `h₂` is read. -/
theorem Eq.subst {α : Sort u} {motive : α → Prop} {a b : α} (h₁ : Eq a b) (h₂ : motive a) :
    motive b :=
  Eq.ndrec h₂ h₁

theorem Eq.symm {α : Sort u} {a b : α} (h : Eq a b) : Eq b a :=
  Eq.ndrec (motive := fun x => Eq x a) rfl h

theorem Eq.trans {α : Sort u} {a b c : α} (h₁ : Eq a b) (h₂ : Eq b c) : Eq a c :=
  Eq.ndrec (motive := fun x => Eq a x) h₁ h₂

theorem congrArg {α : Sort u} {β : Sort v} {a₁ a₂ : α} (f : α → β) (h : Eq a₁ a₂) :
    Eq (f a₁) (f a₂) :=
  Eq.ndrec (motive := fun x => Eq (f a₁) (f x)) rfl h

/-- Rewrite the type of a term along an equality of types. -/
def cast {α β : Sort u} (h : Eq α β) (a : α) : β :=
  Eq.ndrec (motive := fun t => t) a h

/-- Heterogeneous equality (pattern matching on indexed families needs it). -/
inductive HEq : {α : Sort u} → α → {β : Sort u} → β → Prop where
  | refl (a : α) : HEq a a

theorem eq_of_heq {α : Sort u} {a a' : α} (h : HEq a a') : Eq a a' :=
  have gen : (β : Sort u) → (b : β) → HEq a b → (e : Eq α β) → Eq (cast e a) b :=
    fun _ _ hab => hab.rec (fun _ => rfl)
  gen α a' h rfl

theorem heq_of_eq {α : Sort u} {a a' : α} (h : Eq a a') : HEq a a' :=
  Eq.ndrec (motive := fun x => HEq a x) (HEq.refl a) h

abbrev Unit : Type := PUnit

@[match_pattern] abbrev Unit.unit : Unit := PUnit.unit

inductive True : Prop where
  | intro : True

inductive False : Prop

def Not (a : Prop) : Prop := a → False

def False.elim {C : Sort u} (h : False) : C := False.rec (motive := fun _ => C) h

def absurd {a : Prop} {b : Sort v} (h₁ : a) (h₂ : Not a) : b := False.elim (h₂ h₁)

structure PULift.{r, s} (α : Sort s) : Sort (max s r 1) where
  up ::
  down : α

structure Prod (α : Type u) (β : Type v) where
  fst : α
  snd : β

structure PProd (α : Sort u) (β : Sort v) where
  fst : α
  snd : β

structure And (a b : Prop) : Prop where
  intro ::
  left : a
  right : b

set_option genCtorIdx false in
inductive Or (a b : Prop) : Prop where
  | inl (h : a) : Or a b
  | inr (h : b) : Or a b

set_option genCtorIdx false in
inductive Bool : Type where
  | false : Bool
  | true : Bool

/-- `cond b x y`: x when b is true, else y. -/
def cond {α : Sort u} (b : Bool) (x y : α) : α :=
  Bool.rec (motive := fun _ => α) y x b

def Bool.and (x y : Bool) : Bool := cond x y Bool.false

set_option genCtorIdx false in
/-- The natural numbers. The kernel represents numerals as GMP integers of this type. -/
inductive Nat where
  | zero : Nat
  | succ (n : Nat) : Nat

/-- Numerals: `5 : α` elaborates to `OfNat.ofNat 5`. -/
class OfNat (α : Type u) (_ : Nat) where
  ofNat : α

/-- Heterogeneous addition, the class the elaborator's `Nat` offset unifier builds terms with
(`x + k` as `@HAdd.hAdd Nat Nat Nat (@instHAdd Nat instAddNat) x k`). -/
class HAdd (α : Type u) (β : Type v) (γ : outParam (Type w)) where
  hAdd : α → β → γ

class Add (α : Type u) where
  add : α → α → α

instance instHAdd {α : Type u} [Add α] : HAdd α α α where
  hAdd a b := Add.add a b

@[default_instance]
instance instOfNatNat (n : Nat) : OfNat Nat n where
  ofNat := n

set_option genCtorIdx false in
inductive Option (α : Type u) where
  | none : Option α
  | some (val : α) : Option α

set_option genCtorIdx false in
inductive List (α : Type u) where
  | nil : List α
  | cons (head : α) (tail : List α) : List α

namespace Nat

/-- Addition: n + 0 = n, n + (m + 1) = (n + m) + 1. -/
def add : Nat → Nat → Nat
  | n, zero => n
  | n, succ m => succ (add n m)

/-- Multiplication: n * 0 = 0, n * (m + 1) = n * m + n. -/
def mul : Nat → Nat → Nat
  | _, zero => zero
  | n, succ m => add (mul n m) n

/-- `ble n m = true` exactly when n ≤ m. -/
def ble : Nat → Nat → Bool
  | zero, _ => Bool.true
  | succ _, zero => Bool.false
  | succ n, succ m => ble n m

/-- The largest q ≤ n with d * q ≤ x (0 when there is none but 0). -/
def divSearch (x d : Nat) : Nat → Nat
  | zero => zero
  | succ n => cond (ble (mul d (succ n)) x) (succ n) (divSearch x d n)

/-- Floor division, x / 0 = 0: the largest q with d * q ≤ x. As d * q ≤ x forces q ≤ x when
d ≥ 1, searching q ≤ x finds it (`BlockCert.div_spec`). -/
def div (x d : Nat) : Nat := cond (ble 1 d) (divSearch x d x) zero

end Nat

instance instAddNat : Add Nat where
  add := Nat.add

end
