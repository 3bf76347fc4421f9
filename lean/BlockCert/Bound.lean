/-!
# The global deviation bound

`bound eps L n` is the recursion B 0 = 0, B (k+1) = L k * B k + eps k over the rationals, and
`closedBound eps L n` its closed form Σ_{k<n} eps k * Π_{k<j<n} L j. They agree
(`bound_eq_closedBound`), and the bound is nonnegative when every eps and L is.
-/

namespace BlockCert

/-- B 0 = 0, B (k+1) = L k * B k + eps k. -/
def bound (eps L : Nat → Rat) : Nat → Rat
  | 0 => 0
  | k + 1 => L k * bound eps L k + eps k

/-- Π_{k<j<n} L j: the constants of the blocks after block k and before n. -/
def prodAfter (L : Nat → Rat) (k : Nat) : Nat → Rat
  | 0 => 1
  | n + 1 => if k < n then prodAfter L k n * L n else 1

/-- Σ_{k<m} eps k * Π_{k<j<n} L j. -/
def sumTo (eps L : Nat → Rat) (n : Nat) : Nat → Rat
  | 0 => 0
  | m + 1 => sumTo eps L n m + eps m * prodAfter L m n

/-- Σ_{k<n} eps k * Π_{k<j<n} L j. -/
def closedBound (eps L : Nat → Rat) (n : Nat) : Rat :=
  sumTo eps L n n

theorem prodAfter_succ_of_lt (L : Nat → Rat) {k n : Nat} (h : k < n) :
    prodAfter L k (n + 1) = prodAfter L k n * L n := by
  simp [prodAfter, h]

theorem prodAfter_self (L : Nat → Rat) (n : Nat) : prodAfter L n (n + 1) = 1 := by
  simp [prodAfter, Nat.lt_irrefl]

/-- Appending block n multiplies every earlier term by L n. -/
theorem sumTo_succ_eq_mul (eps L : Nat → Rat) (n : Nat) :
    ∀ m, m ≤ n → sumTo eps L (n + 1) m = L n * sumTo eps L n m
  | 0, _ => by simp [sumTo]
  | m + 1, h => by
    have hm : m < n := h
    show sumTo eps L (n + 1) m + eps m * prodAfter L m (n + 1) =
      L n * (sumTo eps L n m + eps m * prodAfter L m n)
    rw [sumTo_succ_eq_mul eps L n m (Nat.le_of_lt hm), prodAfter_succ_of_lt L hm, Rat.mul_add,
      ← Rat.mul_assoc (eps m), Rat.mul_comm (eps m * prodAfter L m n) (L n)]

theorem closedBound_succ (eps L : Nat → Rat) (n : Nat) :
    closedBound eps L (n + 1) = L n * closedBound eps L n + eps n := by
  show sumTo eps L (n + 1) n + eps n * prodAfter L n (n + 1) = L n * sumTo eps L n n + eps n
  rw [sumTo_succ_eq_mul eps L n n (Nat.le_refl n), prodAfter_self, Rat.mul_one]

theorem bound_eq_closedBound (eps L : Nat → Rat) (n : Nat) :
    bound eps L n = closedBound eps L n := by
  induction n with
  | zero => rfl
  | succ n ih => simp only [bound, closedBound_succ, ih]

theorem bound_nonneg {eps L : Nat → Rat} (he : ∀ k, 0 ≤ eps k) (hL : ∀ k, 0 ≤ L k) (n : Nat) :
    0 ≤ bound eps L n := by
  induction n with
  | zero =>
    show (0 : Rat) ≤ 0
    decide
  | succ n ih => exact Rat.add_nonneg (Rat.mul_nonneg (hL n) ih) (he n)

end BlockCert
