"""Streamed normal equations of one output projection, and structured OBS pruning on them.

A projection W [d, n] reads features a_t [n] (the MLP hidden units, or the attention heads'
outputs) and should produce targets y_t [d] (what the block must add at that point for its
output to equal the teacher's). Over calibration tokens t the least-squares problem

    min_{W, b}  sum_t ||W a_t + b - y_t||^2

needs only G = sum a a^T [n, n], C = sum a y^T [n, d], s = sum a, sum y and the count T; with a
constant feature appended (the bias) the Gram matrix is [[G, s], [s^T, T]]. These are streamed
batch by batch (fp32 products, float64 sums), so any number of tokens fits in O(n^2) memory.

Structured OBS (Optimal Brain Surgeon over whole neurons or heads, as ZipLM and SlimGPT apply
it to structured pruning). With H = G + lambda I and B = H^-1 C the LS solution over the alive
features, removing group S and re-solving the rest raises the loss by

    cost(S) = tr(B_S^T [H^-1]_SS^-1 B_S)        (||B_j||^2 / [H^-1]_jj for one feature j)

and the re-solved weights are B - [H^-1]_{:,S} [H^-1]_SS^-1 B_S, with H^-1 downdated the same
way (rows and columns of S become 0). Greedy: remove the cheapest group, update, repeat. The
kept set's weights are then solved afresh from G (no accumulated rounding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from blockcert.errors import BlockCertError

Tensor = torch.Tensor
RIDGE = 1e-4  # times the mean diagonal of the feature Gram matrix


@dataclass
class NormalEquations:
    """sum over tokens of a a^T, a y^T, a, y and the token count (float64).

    features n, targets d; `weight` lets two input streams be mixed (e.g. teacher and stitched
    inputs) as one weighted least-squares problem.
    """

    n: int
    d: int
    gram: Tensor = field(init=False)
    cross: Tensor = field(init=False)
    feature_sum: Tensor = field(init=False)
    target_sum: Tensor = field(init=False)
    count: float = 0.0

    def __post_init__(self):
        self.gram = torch.zeros(self.n, self.n, dtype=torch.float64)
        self.cross = torch.zeros(self.n, self.d, dtype=torch.float64)
        self.feature_sum = torch.zeros(self.n, dtype=torch.float64)
        self.target_sum = torch.zeros(self.d, dtype=torch.float64)

    @torch.no_grad()
    def add(self, features: Tensor, targets: Tensor, weight: float = 1.0) -> None:
        """features [..., n], targets [..., d] (same leading shape), float32 or float64."""
        a = features.reshape(-1, self.n).float()
        y = targets.reshape(-1, self.d).float()
        self.gram += weight * (a.T @ a).double()
        self.cross += weight * (a.T @ y).double()
        self.feature_sum += weight * a.sum(0).double()
        self.target_sum += weight * y.sum(0).double()
        self.count += weight * a.shape[0]

    def merged(self, other: NormalEquations) -> NormalEquations:
        out = NormalEquations(self.n, self.d)
        for name in ("gram", "cross", "feature_sum", "target_sum"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        out.count = self.count + other.count
        return out

    @property
    def mean(self) -> Tensor:
        """Mean feature [n]."""
        return self.feature_sum / max(self.count, 1e-12)

    @property
    def variance(self) -> Tensor:
        """Per-feature variance over tokens [n] (the FLAP fluctuation's first factor)."""
        return (torch.diagonal(self.gram) / max(self.count, 1e-12) - self.mean.pow(2)).clamp_min(0)

    @property
    def mean_square(self) -> Tensor:
        """Per-feature mean of a^2 [n]."""
        return torch.diagonal(self.gram) / max(self.count, 1e-12)

    def system(self, bias: bool) -> tuple[Tensor, Tensor]:
        """(Gram [n(+1), n(+1)], cross [n(+1), d]); with bias the constant feature is last."""
        if not bias:
            return self.gram, self.cross
        top = torch.cat([self.gram, self.feature_sum[:, None]], dim=1)
        corner = torch.tensor([[self.count]], dtype=torch.float64)
        bottom = torch.cat([self.feature_sum[None, :], corner], dim=1)
        return torch.cat([top, bottom]), torch.cat([self.cross, self.target_sum[None, :]])


def ridge_of(gram: Tensor, ridge: float) -> float:
    return ridge * float(torch.diagonal(gram).mean().clamp_min(1e-12))


def solve(
    equations: NormalEquations, kept: Tensor, bias: bool, ridge: float = RIDGE
) -> tuple[Tensor, Tensor | None]:
    """LS weights on features `kept` (sorted indices): (W [d, len(kept)], b [d] or None), fp32."""
    gram, cross = equations.system(bias)
    index = torch.cat([kept, torch.tensor([equations.n])]) if bias else kept
    g = gram[index][:, index]
    lam = ridge_of(equations.gram[kept][:, kept], ridge)
    reg = torch.full((len(index),), lam, dtype=torch.float64)
    if bias:
        reg[-1] = 0.0  # the bias is not shrunk
    beta = torch.linalg.solve(g + torch.diag(reg), cross[index])  # [k(+1), d]
    if bias:
        return beta[:-1].T.float().contiguous(), beta[-1].float().contiguous()
    return beta.T.float().contiguous(), None


def obs_keep(
    equations: NormalEquations,
    n_keep: int,
    group_size: int = 1,
    bias: bool = True,
    ridge: float = RIDGE,
    steps: int = 32,
) -> Tensor:
    """Indices of the features kept by greedy structured OBS, in groups of `group_size`
    consecutive features (1: neurons; head_dim: heads), sorted. n_keep counts groups.

    Neurons go in at most `steps` rounds, each removing the cheapest ceil(rest / rounds left)
    jointly (SlimGPT's batched greedy pruning): one rank-c update instead of c rank-1 ones.
    """
    n_groups = equations.n // group_size
    if equations.n % group_size or not 1 <= n_keep <= n_groups:
        raise BlockCertError(
            f"cannot keep {n_keep} groups of {group_size} out of {equations.n} features."
        )
    gram, cross = equations.system(bias)
    lam = ridge_of(equations.gram, ridge)
    reg = torch.full((len(gram),), lam, dtype=torch.float64)
    if bias:
        reg[-1] = 0.0
    h_inv = torch.linalg.inv(gram + torch.diag(reg))
    beta = h_inv @ cross
    alive = torch.ones(n_groups, dtype=torch.bool)
    groups = torch.arange(equations.n).view(n_groups, group_size)
    rounds = steps if group_size == 1 else n_groups - n_keep
    while int(alive.sum()) > n_keep:
        if group_size == 1:
            diag = torch.diagonal(h_inv)[: equations.n].clamp_min(1e-300)
            cost = beta[: equations.n].pow(2).sum(1) / diag
        else:
            cost = torch.stack([_group_cost(h_inv, beta, g) for g in groups])
        cost[~alive] = float("inf")
        excess = int(alive.sum()) - n_keep
        chunk = -(-excess // max(rounds, 1))
        rounds -= 1
        cheapest = cost.topk(chunk, largest=False).indices
        _remove(h_inv, beta, groups[cheapest].flatten())
        alive[cheapest] = False
    return groups[alive].flatten()


def _group_cost(h_inv: Tensor, beta: Tensor, group: Tensor) -> Tensor:
    block = h_inv[group][:, group]
    b = beta[group]
    return torch.trace(b.T @ torch.linalg.solve(block, b))


def _remove(h_inv: Tensor, beta: Tensor, group: Tensor) -> None:
    """Re-solve without `group`: beta -= H^-1[:, S] H^-1[S, S]^-1 beta_S; downdate H^-1."""
    cols = h_inv[:, group].clone()  # [n, g]
    step = torch.linalg.solve(h_inv[group][:, group], torch.cat([beta[group], cols.T], dim=1))
    d = beta.shape[1]
    beta.addmm_(cols, step[:, :d], alpha=-1.0)  # in place: H^-1 is n x n float64
    h_inv.addmm_(cols, step[:, d:], alpha=-1.0)
