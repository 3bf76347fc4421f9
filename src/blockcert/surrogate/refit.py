"""Least-squares refit of the output projections after pruning (reconstruction init).

Dropping heads or neurons leaves the output / down projection reading fewer features; refitting
each projection to reproduce the full block's output on captured inputs recovers much of the
loss before any gradient step. Ridge-regularised normal equations, accumulated batch by batch
in float64: W = Y^T A (A^T A + lambda I)^-1.
"""

from __future__ import annotations

import torch

from blockcert.surrogate.interpret import run_graph, run_values
from blockcert.surrogate.ir import Surrogate
from blockcert.surrogate.view import block_view

RIDGE = 1e-3  # times the mean diagonal of the Gram matrix


def _solve(gram: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    ridge = RIDGE * torch.diagonal(gram).mean().clamp_min(1e-12)
    eye = torch.eye(len(gram), dtype=gram.dtype)
    return torch.linalg.solve(gram + ridge * eye, cross).T.float()


@torch.no_grad()
def _refit(
    surrogate: Surrogate,
    full: Surrogate,
    inputs: list[torch.Tensor],
    feature: str,
    node: str,
    target: str,
) -> None:
    """Refit linear node `node` (reading `feature`) so that `target` matches the full block."""
    projection = block_view(surrogate).projections()[node]
    if projection.low_rank or projection.bias is not None:
        return  # low-rank or biased projections keep their pruned weights
    gram, cross = None, None
    for x in inputs:
        mine = run_values(surrogate.graph, surrogate.weights, x, (feature, "resid_attn"))
        a = mine[feature].reshape(-1, mine[feature].shape[-1]).double()
        if target == "attn_out":
            y = run_values(full.graph, full.weights, x, ("attn_out",))["attn_out"]
        else:  # what the MLP must add to this surrogate's own mid state to give the block output
            y = run_graph(full.graph, full.weights, x) - mine["resid_attn"]
        y = y.reshape(-1, y.shape[-1]).double()
        gram = a.T @ a if gram is None else gram + a.T @ a
        cross = a.T @ y if cross is None else cross + a.T @ y
    surrogate.weights[surrogate.graph.node(node).weights["weight"]] = _solve(gram, cross)


def refit_projections(surrogate: Surrogate, full: Surrogate, inputs: list[torch.Tensor]) -> None:
    """Refit attn_out, then mlp_out (which sees the refitted attention), in place."""
    if not inputs:
        return
    _refit(surrogate, full, inputs, "attn", "attn_out", "attn_out")
    _refit(surrogate, full, inputs, "hidden", "mlp_out", "out")
