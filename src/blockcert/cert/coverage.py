"""Coverage at a threshold with a one-sided Clopper-Pearson upper bound on the miss rate."""

from __future__ import annotations

from dataclasses import dataclass

from scipy.stats import beta


def clopper_pearson_upper(misses: int, n: int, delta: float) -> float:
    """Upper end of the one-sided (1 - delta) Clopper-Pearson interval for a binomial rate."""
    if n <= 0:
        return 1.0
    if misses >= n:
        return 1.0
    return float(beta.ppf(1.0 - delta, misses + 1, n - misses))


@dataclass(frozen=True)
class Coverage:
    """Fraction of evaluated tokens with error <= tau; kind is `abs` or `rel` (error / ||f(h)||)."""

    kind: str
    tau: float
    covered: int
    n: int
    delta: float

    @property
    def fraction(self) -> float:
        return self.covered / self.n if self.n else 0.0

    @property
    def miss_rate_upper(self) -> float:
        return clopper_pearson_upper(self.n - self.covered, self.n, self.delta)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "tau": self.tau,
            "covered": self.covered,
            "n": self.n,
            "fraction": self.fraction,
            "delta": self.delta,
            "miss_rate_upper": self.miss_rate_upper,
        }
