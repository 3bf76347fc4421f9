"""Edit budget: the largest fraction of the closed-form update whose certified drift fits.

Only the down projection changes, W -> W + s dW, so on a held-out input the edited block g_s
and the original block f differ by
    ||g_s(h)_t - f(h)_t|| <= s ||dW k_t|| + ||g_0(h)_t - f(h)_t||      (triangle inequality)
hence eps(s) <= s * eps_1 + eps_0 with eps_1 = max_t ||dW k_t|| over held-out tokens and eps_0
the fp32 gap of the unedited IR (~1e-6 relative). The budget B (absolute, or B_rel times the
median ||h_{k+1}|| on held-out tokens) is met by every s <= (B - eps_0) / eps_1. Efficacy grows
with s, so the smallest scale at which the edit still succeeds is found by bisection; an edit
succeeds within budget iff that scale is <= the largest one the budget allows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch

from blockcert.edit.keys import block_with_keys
from blockcert.surrogate.ir import Surrogate


@dataclass(frozen=True)
class Drift:
    """eps_0, eps_1 (see module doc) and the median block-output norm on held-out tokens."""

    eps_0: float
    eps_1: float
    median_norm: float

    def bound(self, scale: float) -> float:
        return scale * self.eps_1 + self.eps_0

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def heldout_drift(
    surrogate: Surrogate, update: torch.Tensor, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> Drift:
    """Drift of the full update dW `[d, m]` on held-out pairs (x_in, x_out)."""
    eps_0 = eps_1 = 0.0
    norms = []
    for x_in, x_out in pairs:
        out, keys = block_with_keys(surrogate, x_in)
        eps_0 = max(eps_0, float((out - x_out).norm(dim=-1).max()))
        eps_1 = max(eps_1, float((keys.double() @ update.T).norm(dim=-1).max()))
        norms.append(x_out.norm(dim=-1).flatten())
    return Drift(eps_0, eps_1, float(torch.cat(norms).median()))


def budget_from(
    max_eps: float | None, max_eps_rel: float | None, median_norm: float
) -> float | None:
    """The tighter of the absolute and the relative budget; None when neither is set."""
    limits = [b for b in (max_eps, None if max_eps_rel is None else max_eps_rel * median_norm)]
    limits = [float(b) for b in limits if b is not None]
    return min(limits) if limits else None


def largest_scale(budget: float | None, drift: Drift, margin: float = 1e-4) -> float:
    """max s in [0, 1] with s * eps_1 + eps_0 <= budget (margin absorbs fp32 re-evaluation)."""
    if budget is None or drift.eps_1 <= 0:
        return 1.0
    room = budget * (1.0 - margin) - drift.eps_0
    return max(0.0, min(1.0, room / drift.eps_1))


def smallest_scale(
    succeeds: Callable[[float], bool], high: float = 1.0, tol: float = 1e-3
) -> float | None:
    """Bisection for the least s in (0, high] with succeeds(s) (assumed monotone in s);
    None when the edit fails even at `high`."""
    if not succeeds(high):
        return None
    low = 0.0
    while high - low > tol:
        mid = 0.5 * (low + high)
        low, high = (low, mid) if succeeds(mid) else (mid, high)
    return high
