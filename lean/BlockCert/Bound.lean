import BlockCert.RatOrder

/-!
# The global deviation bound

`bound eps L n` is the recursion B 0 = 0, B (k+1) = L k * B k + eps k over the rationals: block
k (0-based here, block k+1 of the paper) has local error `eps k` and Lipschitz constant `L k`.
`closedBound eps L n` is its closed form Σ_{k<n} eps k * Π_{k<j<n} L j, with the sum and product
defined by structural recursion. They agree (`bound_eq_closedBound`), and the bound is
nonnegative when every eps and L is (`bound_nonneg`).
-/

namespace BlockCert

/-- B 0 = 0, B (k+1) = L k * B k + eps k. -/
def bound (eps L : Nat → Rat) : Nat → Rat
  | 0 => 0
  | k + 1 => L k * bound eps L k + eps k

/-- Π_{k<j<n} L j: the constants of the blocks after block k and before block n. -/
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

theorem bound_zero (eps L : Nat → Rat) : bound eps L 0 = 0 := rfl

theorem bound_succ (eps L : Nat → Rat) (k : Nat) :
    bound eps L (k + 1) = L k * bound eps L k + eps k := rfl

theorem prodAfter_succ (L : Nat → Rat) (k n : Nat) :
    prodAfter L k (n + 1) = if k < n then prodAfter L k n * L n else 1 := rfl

theorem sumTo_zero (eps L : Nat → Rat) (n : Nat) : sumTo eps L n 0 = 0 := rfl

theorem sumTo_succ (eps L : Nat → Rat) (n m : Nat) :
    sumTo eps L n (m + 1) = sumTo eps L n m + eps m * prodAfter L m n := rfl

/-- Extending the product past block n multiplies it by L n (when k < n). -/
theorem prodAfter_succ_of_lt (L : Nat → Rat) {k n : Nat} (h : k < n) :
    prodAfter L k (n + 1) = prodAfter L k n * L n := by
  rw [prodAfter_succ, if_pos h]

/-- No block lies strictly between n and n + 1. -/
theorem prodAfter_self (L : Nat → Rat) (n : Nat) : prodAfter L n (n + 1) = 1 := by
  rw [prodAfter_succ, if_neg (Nat.lt_irrefl n)]

/-- Appending block n multiplies every earlier term of the sum by L n. -/
theorem sumTo_succ_eq_mul (eps L : Nat → Rat) (n : Nat) :
    ∀ m, m ≤ n → sumTo eps L (n + 1) m = L n * sumTo eps L n m
  | 0, _ => by
    first
    | exact (Rat.mul_zero (L n)).symm
    | exact Rat.mul_zero.symm
  | m + 1, hm => by
    have hlt : m < n := hm
    rw [sumTo_succ, sumTo_succ,
      sumTo_succ_eq_mul eps L n m (Nat.le_trans (Nat.le_succ m) hm),
      prodAfter_succ_of_lt L hlt, Rat.mul_add, ← Rat.mul_assoc (eps m),
      Rat.mul_comm (eps m * prodAfter L m n) (L n)]

/-- The closed form satisfies the same recursion as `bound`. -/
theorem closedBound_succ (eps L : Nat → Rat) (n : Nat) :
    closedBound eps L (n + 1) = L n * closedBound eps L n + eps n := by
  show sumTo eps L (n + 1) n + eps n * prodAfter L n (n + 1) = L n * sumTo eps L n n + eps n
  rw [sumTo_succ_eq_mul eps L n n (Nat.le_refl n), prodAfter_self]
  first
  | exact congrArg (fun t => L n * sumTo eps L n n + t) (Rat.mul_one (eps n))
  | exact congrArg (fun t => L n * sumTo eps L n n + t) (Rat.mul_one (a := eps n))

/-- The recursion and the closed form agree. -/
theorem bound_eq_closedBound (eps L : Nat → Rat) : ∀ n, bound eps L n = closedBound eps L n
  | 0 => rfl
  | n + 1 => by
    rw [bound_succ, closedBound_succ, bound_eq_closedBound eps L n]

/-- B n ≥ 0 when every eps k and L k is. -/
theorem bound_nonneg {eps L : Nat → Rat} (he : ∀ k, 0 ≤ eps k) (hL : ∀ k, 0 ≤ L k) :
    ∀ n, 0 ≤ bound eps L n
  | 0 => rat_le_refl 0
  | n + 1 => Rat.add_nonneg (Rat.mul_nonneg (hL n) (bound_nonneg he hL n)) (he n)

end BlockCert
