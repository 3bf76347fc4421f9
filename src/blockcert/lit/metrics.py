"""torchmetrics metric over per-token errors e_t = ||g(h)_t - f(h)_t|| (fp32)."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from blockcert.cert.metrics import quantile


class TokenErrorMetrics(Metric):
    """eps_max, mean, p99 and coverage@tau of per-token errors seen so far."""

    full_state_update = False

    def __init__(self, taus: list[float]):
        super().__init__()
        self.taus = list(taus)
        self.add_state("errors", default=[], dist_reduce_fx="cat")

    def update(self, errors: torch.Tensor) -> None:
        self.errors.append(errors.detach().float().flatten())

    def compute(self) -> dict[str, torch.Tensor]:
        errors = dim_zero_cat(self.errors)
        out = {
            "eps_max": errors.max(),
            "mean": errors.mean(),
            "p99": torch.tensor(quantile(errors, 0.99)),
        }
        for tau in self.taus:
            out[f"coverage@{tau:g}"] = (errors <= tau).float().mean()
        return out
