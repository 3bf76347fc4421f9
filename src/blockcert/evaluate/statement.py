"""The direct statement about fresh prompts, on every metric at once: what a reader quotes.

With the prompt as the i.i.d. unit and metrics v_1..v_m per prompt (evaluate/fresh_eval.py),
the scales c_i are fixed on prompts drawn before and apart from the calibration prompts (the
verifier's own split), and one score per prompt combines the metrics:

    s(p) = max_i v_i(p) / c_i         (c_i = 0: the ratio is 0 where v_i = 0, else infinite)

Order statistic = one-sided Clopper-Pearson. For the n calibration scores and the threshold
t = s_(n-j) (exactly j scores strictly above it), the probability that a fresh prompt's score
exceeds t is below CP_upper(j, n, delta) with confidence 1 - delta (ties only make it
conservative); j is the largest count whose bound meets the target miss rate. Since
s(p) <= t means v_i(p) <= t c_i for every i at once, the statement is joint:

    with confidence 1 - delta, a fresh prompt has v_i <= t c_i for every metric i,
    all at once, with probability >= 1 - CP_upper(j, n, delta).

Zero exceedances reach miss rate m at confidence 1 - delta from n >= ln(delta) / ln(1 - m)
calibration prompts (459 for 0.99 / 0.01). The untouched check split validates the statement:
the number of its prompts beyond t is at most Binomial(n_check, m) in law, so a count above
that law's (1 - delta)-quantile contradicts it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from scipy.stats import binom

from blockcert.cert.coverage import clopper_pearson_upper

UNITS = {"mean KL (nats)": " nats", "max KL (nats)": " nats", "|delta NLL| (nats)": " nats"}


def calibration_size(confidence: float, miss_rate: float) -> int:
    """The fewest prompts whose zero exceedances give CP_upper(0, n, 1 - confidence) <= miss."""
    n = math.ceil(math.log(1.0 - confidence) / math.log(1.0 - miss_rate))
    while clopper_pearson_upper(0, n, 1.0 - confidence) > miss_rate:
        n += 1
    return n


def scores(values: Mapping[str, torch.Tensor], scales: Mapping[str, float]) -> torch.Tensor:
    """s(p) = max_i v_i(p) / c_i, `[n]` float64 (see the module docstring for c_i = 0)."""
    parts = []
    for name, v in values.items():
        c = scales[name]
        if c > 0:
            parts.append(v.double() / c)
        else:
            parts.append(torch.where(v > 0, math.inf, 0.0).double())
    return torch.stack(parts).amax(0)


@dataclass(frozen=True)
class JointStatement:
    metrics: list[str]
    scales: list[float]
    score_threshold: float  # t
    n: int  # calibration prompts
    n_exceed: int  # calibration scores above t
    confidence: float
    miss_target: float
    miss_upper: float  # CP_upper(n_exceed, n, 1 - confidence)
    prompts: str  # which prompts the statement covers (corpus, lengths)

    @property
    def thresholds(self) -> dict[str, float]:
        return {
            name: self.score_threshold * c if c > 0 else 0.0
            for name, c in zip(self.metrics, self.scales, strict=True)
        }

    def sentence(self) -> str:
        parts = []
        for name, value in self.thresholds.items():
            if name == "top-1 disagreement":
                parts.append(f"top-1 agreement >= {max(0.0, 1 - value):.4%}")
            else:
                label = name.split(" (")[0]
                parts.append(f"{label} <= {value:.4g}{UNITS.get(name, '')}")
        return (
            f"with confidence {self.confidence:.4g}, a fresh prompt ({self.prompts}) has "
            f"{', '.join(parts)}, all at once, with probability >= {1 - self.miss_upper:.4g} "
            f"(n = {self.n} calibration prompts, {self.n_exceed} beyond)"
        )

    def check(self, values: Mapping[str, torch.Tensor]) -> dict:
        """Prompts of the check split beyond the statement, against its binomial slack."""
        s = scores(values, dict(zip(self.metrics, self.scales, strict=True)))
        n = len(s)
        beyond = int((s > self.score_threshold).sum())
        allowed = int(binom.ppf(self.confidence, n, self.miss_upper)) if n else 0
        per_metric = {
            name: int((values[name] > value).sum()) for name, value in self.thresholds.items()
        }
        return {
            "n": n,
            "beyond": beyond,
            "fraction": beyond / n if n else 0.0,
            "allowed": allowed,
            "within": beyond <= allowed,
            "per_metric_beyond": per_metric,
        }

    def to_dict(self) -> dict:
        return asdict(self) | {"thresholds": self.thresholds, "statement": self.sentence()}


def joint_statement(
    values: Mapping[str, torch.Tensor],
    scales: Mapping[str, float],
    confidence: float,
    miss_target: float,
    prompts: str,
) -> JointStatement:
    """The statement from calibration `values` (see the module docstring)."""
    s = scores(values, scales)
    n, delta = len(s), 1.0 - confidence
    j = 0  # the most exceedances whose bound still meets the target (0 if none does)
    while j + 1 < n and clopper_pearson_upper(j + 1, n, delta) <= miss_target:
        j += 1
    t = float(s.sort().values[n - 1 - j])
    exceed = int((s > t).sum())
    return JointStatement(
        metrics=list(values),
        scales=[float(scales[name]) for name in values],
        score_threshold=t,
        n=n,
        n_exceed=exceed,
        confidence=confidence,
        miss_target=miss_target,
        miss_upper=clopper_pearson_upper(exceed, n, delta),
        prompts=prompts,
    )


def shift_rows(statement: JointStatement, values: Mapping[str, torch.Tensor]) -> dict:
    """The same metrics on prompts the statement does NOT cover: how far it travels."""
    row = statement.check(values)
    row["max"] = {name: float(v.max()) if len(v) else 0.0 for name, v in values.items()}
    return row
