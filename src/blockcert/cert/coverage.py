"""Coverage at a threshold with a one-sided Clopper-Pearson upper bound on the miss rate.

Two sampling units, labelled in every entry. `prompt`: a prompt is covered when every one of its
tokens is within tau; prompts are the i.i.d. draws, so the Clopper-Pearson bound is a statement
about fresh prompts from the same distribution. `token`: the fraction of tokens within tau; the
tokens of one prompt are correlated, so its Clopper-Pearson figure treats correlated trials as
independent and is descriptive only (overconfident as a bound).
"""

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
    """Fraction of evaluated units (tokens or prompts) within tau.

    kind: `abs` (error <= tau) or `rel` (error / ||f(h)|| <= tau); unit: `token` or `prompt`.
    """

    kind: str
    unit: str
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

    @property
    def key(self) -> tuple[str, str, float]:
        """What identifies an entry: claims are matched by this, never by list position."""
        return (self.kind, self.unit, float(self.tau))

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "unit": self.unit,
            "tau": self.tau,
            "covered": self.covered,
            "n": self.n,
            "fraction": self.fraction,
            "delta": self.delta,
            "miss_rate_upper": self.miss_rate_upper,
        }
