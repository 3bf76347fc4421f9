prelude
import BlockCert.Core

/-!
# Order and arithmetic on `Nat`, proved from the definitions in `BlockCert.Core`

`≤` is the inductive `Nat.le` (n ≤ n, and n ≤ m gives n ≤ m + 1). The lemmas are the few the
bound needs: order (`le_trans`, `zero_le`, `succ_le_succ`), `Nat.ble` decides `≤`
(`le_of_ble`, `lt_of_ble_false`), addition and multiplication are monotone, `Nat.div` is floor
division (`div_spec`) and `ceilDiv` rounds up (`le_mul_ceilDiv`). Everything is a term-mode
proof: structural recursion, `Nat.le.rec`, `Eq.subst` and `congrArg`.
-/

noncomputable section

namespace Nat

/-- n ≤ m. -/
inductive le (n : Nat) : Nat → Prop where
  | refl : le n n
  | step {m : Nat} : le n m → le n (succ m)

/-- n < m is n + 1 ≤ m. -/
def lt (n m : Nat) : Prop := le (succ n) m

theorem le_refl (n : Nat) : le n n := le.refl

theorem le_succ (n : Nat) : le n (succ n) := le.step le.refl

theorem le_trans {a b c : Nat} (hab : le a b) (hbc : le b c) : le a c :=
  le.rec (motive := fun c _ => le a c) hab (fun _ ih => le.step ih) hbc

theorem le_of_lt {n m : Nat} (h : lt n m) : le n m := le_trans (le_succ n) h

theorem zero_le : ∀ n : Nat, le zero n
  | zero => le.refl
  | succ n => le.step (zero_le n)

theorem succ_le_succ {n m : Nat} (h : le n m) : le (succ n) (succ m) :=
  le.rec (motive := fun m _ => le (succ n) (succ m)) le.refl (fun _ ih => le.step ih) h

end Nat

namespace BlockCert

open Nat

/-! ## The kernel-accelerated operations are the standard ones

The kernel evaluates `Nat.add`, `Nat.mul`, `Nat.ble` and `Nat.div` on numerals with GMP and
trusts that the definitions in `BlockCert.Core` compute the same functions. These equations,
proved by unfolding the definitions (`rfl` on variables, where GMP cannot fire), determine
addition, multiplication and `≤` by induction; `div_spec` below determines floor division. -/

theorem add_zero (n : Nat) : Eq (add n zero) n := rfl
theorem add_succ (n m : Nat) : Eq (add n (succ m)) (succ (add n m)) := rfl
theorem mul_zero (n : Nat) : Eq (mul n zero) zero := rfl
theorem mul_succ (n m : Nat) : Eq (mul n (succ m)) (add (mul n m) n) := rfl
theorem ble_zero (m : Nat) : Eq (ble zero m) Bool.true := rfl
theorem ble_succ_zero (n : Nat) : Eq (ble (succ n) zero) Bool.false := rfl
theorem ble_succ_succ (n m : Nat) : Eq (ble (succ n) (succ m)) (ble n m) := rfl
theorem div_zero (x : Nat) : Eq (div x zero) zero := rfl

/-- GMP on numerals gives the textbook values (`rfl`: the kernel's accelerated evaluation). -/
theorem gmp_samples : And (Eq (add 123456789012345678901 987654321098765432109)
      1111111110111111111010)
    (And (Eq (mul 123456789012345678901 1000000000000000) 123456789012345678901000000000000000)
      (And (Eq (div 1000000000000000000001 7) 142857142857142857143)
        (And (Eq (ble 10 9) Bool.false) (Eq (div 7 0) 0)))) :=
  And.intro rfl (And.intro rfl (And.intro rfl (And.intro rfl rfl)))

/-- `false ≠ true`: transport `True` along `false = true` into `False`. -/
theorem false_ne_true (h : Eq Bool.false Bool.true) : False :=
  Eq.subst (motive := fun b => cond b False True) h True.intro

/-- Reason about `cond b x y` by cases on `b`. -/
theorem cond_cases {α : Sort u} {P : α → Prop} (b : Bool) {x y : α}
    (hx : Eq b Bool.true → P x) (hy : Eq b Bool.false → P y) : P (cond b x y) :=
  Bool.rec (motive := fun c => (Eq c Bool.true → P x) → (Eq c Bool.false → P y) → P (cond c x y))
    (fun _ hy => hy rfl) (fun hx _ => hx rfl) b hx hy

/-- Both sides of a true `Bool.and`. -/
theorem and_true_left : ∀ {a b : Bool}, Eq (Bool.and a b) Bool.true → Eq a Bool.true
  | Bool.true, _, _ => rfl
  | Bool.false, _, h => absurd h false_ne_true

theorem and_true_right : ∀ {a b : Bool}, Eq (Bool.and a b) Bool.true → Eq b Bool.true
  | Bool.true, _, h => h
  | Bool.false, _, h => absurd h false_ne_true

/-- `n + 1 ≠ 0`: transport `True` along `n + 1 = 0` into `False`. -/
theorem succ_ne_zero (n : Nat) (h : Eq (succ n) zero) : False :=
  Eq.subst (motive := fun k => Nat.rec (motive := fun _ => Prop) False (fun _ _ => True) k) h
    True.intro

/-- Nothing is below 0. -/
theorem not_lt_zero (k : Nat) (h : lt k zero) : False :=
  le.rec (motive := fun m _ => Eq m zero → False) (fun e => succ_ne_zero k e)
    (fun {m} _ _ e => succ_ne_zero m e) h rfl

/-- The predecessor, 0 at 0. -/
def pred : Nat → Nat
  | zero => zero
  | succ n => n

/-- n + 1 ≤ m + 1 gives n ≤ m. -/
theorem le_of_succ_le_succ {n m : Nat} (h : le (succ n) (succ m)) : le n m :=
  le.rec (n := succ n) (motive := fun k _ => le n (pred k)) (le_refl n)
    (fun {_} hk _ => le_trans (le_succ n) hk) h

/-- `Nat.ble n m = true` gives n ≤ m. -/
theorem le_of_ble : ∀ n m : Nat, Eq (ble n m) Bool.true → le n m
  | zero, m, _ => zero_le m
  | succ _, zero, h => absurd h false_ne_true
  | succ n, succ m, h => succ_le_succ (le_of_ble n m h)

/-- `Nat.ble n m = false` gives m < n. -/
theorem lt_of_ble_false : ∀ n m : Nat, Eq (ble n m) Bool.false → lt m n
  | zero, _, h => absurd (Eq.symm h) false_ne_true
  | succ n, zero, _ => succ_le_succ (zero_le n)
  | succ n, succ m, h => succ_le_succ (lt_of_ble_false n m h)

/-- 1 ≤ d makes `ble 1 d` true: d is a successor, and `ble 1 (m + 1)` is `ble 0 m`. -/
theorem ble_one_of_le {d : Nat} (h : le 1 d) : Eq (ble 1 d) Bool.true :=
  le.rec (n := 1) (motive := fun m _ => Eq (ble 1 m) Bool.true) rfl (fun _ _ => rfl) h

/-! ## Addition -/

theorem zero_add : ∀ n : Nat, Eq (add zero n) n
  | zero => rfl
  | succ n => congrArg succ (zero_add n)

theorem succ_add (n : Nat) : ∀ m : Nat, Eq (add (succ n) m) (succ (add n m))
  | zero => rfl
  | succ m => congrArg succ (succ_add n m)

theorem add_comm (n : Nat) : ∀ m : Nat, Eq (add n m) (add m n)
  | zero => Eq.symm (zero_add n)
  | succ m => Eq.trans (congrArg succ (add_comm n m)) (Eq.symm (succ_add m n))

/-- n ≤ n + k. -/
theorem le_add_right (n : Nat) : ∀ k : Nat, le n (add n k)
  | zero => le.refl
  | succ k => le.step (le_add_right n k)

/-- a ≤ b gives c + a ≤ c + b. -/
theorem add_le_add_left {a b : Nat} (h : le a b) (c : Nat) : le (add c a) (add c b) :=
  le.rec (motive := fun m _ => le (add c a) (add c m)) le.refl (fun _ ih => le.step ih) h

/-- a ≤ b gives a + c ≤ b + c. -/
theorem add_le_add_right {a b : Nat} (h : le a b) (c : Nat) : le (add a c) (add b c) :=
  Eq.subst (motive := fun x => le x (add b c)) (add_comm c a)
    (Eq.subst (motive := fun y => le (add c a) y) (add_comm c b) (add_le_add_left h c))

/-- a ≤ b and c ≤ d give a + c ≤ b + d. -/
theorem add_le_add {a b c d : Nat} (hab : le a b) (hcd : le c d) : le (add a c) (add b d) :=
  le_trans (add_le_add_right hab c) (add_le_add_left hcd b)

/-! ## Multiplication -/

/-- b ≤ c gives a * b ≤ a * c. -/
theorem mul_le_mul_left {b c : Nat} (h : le b c) (a : Nat) : le (mul a b) (mul a c) :=
  le.rec (motive := fun m _ => le (mul a b) (mul a m)) le.refl
    (fun {m} _ ih => le_trans ih (le_add_right (mul a m) a)) h

/-- 1 ≤ d gives x ≤ d * x. -/
theorem le_mul_of_one_le {d : Nat} (h : le 1 d) : ∀ x : Nat, le x (mul d x)
  | zero => le.refl
  | succ x => add_le_add (le_mul_of_one_le h x) h

/-! ## Division -/

/-- What `divSearch` returns is a quotient that fits: d * q ≤ x. -/
theorem divSearch_fits (x d : Nat) : ∀ n : Nat, le (mul d (divSearch x d n)) x
  | zero => zero_le x
  | succ n =>
    cond_cases (P := fun q => le (mul d q) x) (ble (mul d (succ n)) x)
      (fun h => le_of_ble _ _ h) (fun _ => divSearch_fits x d n)

/-- `divSearch x d n` is n, or no larger quotient fits: x < d * (q + 1). -/
theorem divSearch_max (x d : Nat) :
    ∀ n : Nat, Or (Eq (divSearch x d n) n) (lt x (mul d (succ (divSearch x d n))))
  | zero => Or.inl rfl
  | succ n =>
    cond_cases (P := fun q => Or (Eq q (succ n)) (lt x (mul d (succ q))))
      (ble (mul d (succ n)) x) (fun _ => Or.inl rfl)
      (fun hb => Or.inr (Or.rec (motive := fun _ => lt x (mul d (succ (divSearch x d n))))
        (fun heq => Eq.subst (motive := fun q => lt x (mul d (succ q))) (Eq.symm heq)
          (lt_of_ble_false _ _ hb))
        (fun hlt => hlt) (divSearch_max x d n)))

/-- With d ≥ 1, `div x d` is the search up to x. -/
theorem div_eq_search {x d : Nat} (h : le 1 d) : Eq (div x d) (divSearch x d x) :=
  congrArg (fun b => cond b (divSearch x d x) zero) (ble_one_of_le h)

/-- `Nat.div` is floor division: for d ≥ 1, q = x / d satisfies d * q ≤ x < d * (q + 1). This
property determines q, so the definition agrees with the kernel's GMP division. -/
theorem div_spec {x d : Nat} (h : le 1 d) :
    And (le (mul d (div x d)) x) (lt x (mul d (succ (div x d)))) :=
  Eq.subst (motive := fun q => And (le (mul d q) x) (lt x (mul d (succ q))))
    (Eq.symm (div_eq_search h))
    (And.intro (divSearch_fits x d x)
      (Or.rec (motive := fun _ => lt x (mul d (succ (divSearch x d x))))
        (fun heq => Eq.subst (motive := fun q => lt x (mul d (succ q))) (Eq.symm heq)
          (le_mul_of_one_le h (succ x)))
        (fun hlt => hlt) (divSearch_max x d x)))

/-- ⌈x / d⌉: the floor, plus one unless d divides x. -/
def ceilDiv (x d : Nat) : Nat := cond (ble x (mul d (div x d))) (div x d) (succ (div x d))

/-- Rounding up: x ≤ d * ⌈x / d⌉ for d ≥ 1. -/
theorem le_mul_ceilDiv {x d : Nat} (h : le 1 d) : le x (mul d (ceilDiv x d)) :=
  cond_cases (P := fun q => le x (mul d q)) (ble x (mul d (div x d)))
    (fun hb => le_of_ble _ _ hb) (fun _ => le_of_lt (div_spec h).right)

end BlockCert

end
