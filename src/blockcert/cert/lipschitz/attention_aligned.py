"""Cauchy-Schwarz in the output direction: the aligned bounds of the attention rows.

On the rows that can decide the max, sums of rank-one terms sum_(h,s) c_hs |u . w_hs| over
heads and sources (w_hs = W_o,h (v_s - vbar_t), pointing in many directions) are bounded
jointly, sqrt(sum c) sqrt(lambda_max(sum c w w^T)), with lambda_max from an H x H
Collatz-Wielandt bound on the head blocks (cross terms by their traces); the same for the query
path's tube move, ||sum_s c_s a_s b_s^T|| <= sqrt(lambda_max(sum c a a^T) lambda_max(sum c b
b^T)). Notation of blockcert.cert.lipschitz.attention.
Derivation: docs/soundness.md#attention-rows.
"""

from __future__ import annotations

import torch

from blockcert.cert.lipschitz.folded import FoldedBlock
from blockcert.cert.spectral import perron_root_upper, spectral_norm_upper_batched

Tensor = torch.Tensor


def key_path_aligned(f: FoldedBlock, coef: Tensor, spread: tuple[Tensor, Tensor]) -> Tensor:
    """[T] >= max_(||u|| = 1) sum_(h, s) coef_hts |u . W_o,h (v_s - vbar_t)| (centre vectors);
    spread: output_spread of coef.

    Cauchy-Schwarz over the pairs (h, s): <= sqrt(C_t lambda_max(G_t)), C_t = sum coef_hts and
    G_t = sum_h W_o,h S_h,t W_o,h^T with S_h,t = sum_s coef_hts (v_s - vbar_t)(v_s - vbar_t)^T.
    G_t is the Gram matrix of the blocks W_o,h S_h^(1/2), so lambda_max(G_t) <= lambda_max(N_t)
    with N_hg >= ||S_h^(1/2) K_hg S_g^(1/2)|| (K_hg = W_o,h^T W_o,g): the diagonal through the
    metric of W_o,h, the rest by Frobenius (tr(S_h K_hg S_g K_hg^T)); lambda_max(N_t) <=
    max_h (N_t x)_h / x_h for any positive x (Collatz-Wielandt). Heads write to nearly
    orthogonal subspaces and the sources' deviations point in many directions, so this is far
    below the row sum sum_(h, s) coef_hts ||W_o,h (v_s - vbar_t)||.
    """
    scat, diag = spread
    n, T = diag.shape
    cross = cross_traces(f.o_cross, scat)
    eye = torch.eye(n, dtype=torch.bool)
    mat = torch.where(eye, diag.T[:, :, None].expand(T, n, n), cross)  # [t, h, g]
    mat = torch.maximum(mat, mat.transpose(-1, -2))
    start = torch.ones(T, n, dtype=torch.float64)
    top = perron_root_upper(lambda x: (mat @ x[..., None])[..., 0], start, 20)  # [t]
    return (coef.sum((0, -1)) * top).clamp_min(0.0).sqrt() * (1 + 1e-8)


def output_spread(f: FoldedBlock, v: Tensor, p: Tensor, coef: Tensor) -> tuple[Tensor, Tensor]:
    """(S, top): the scatter S_h,t of the value deviations v_s - vbar_t weighted by coef
    [H, t, hd, hd], and top [H, t] >= lambda_max(W_o,h S_h,t W_o,h^T)."""
    scat, rounding = _scatter(coef, v, p @ v)
    return scat, _metric_top(f.o_metric, f.o_slack, scat, rounding)


def _scatter(coef: Tensor, x: Tensor, xbar: Tensor) -> tuple[Tensor, Tensor]:
    """(S, rounding): S_h,t = sum_s coef_hts (x_s - xbar_t)(x_s - xbar_t)^T [H, t, hd, hd] for
    coef >= 0 (x [H, s, hd], xbar [H, t, hd]), expanded into matrix products, and a bound
    [H, t] on the float64 rounding of that expansion (in spectral norm)."""
    n, T, hd = coef.shape[0], coef.shape[1], x.shape[-1]
    outer = (x[..., :, None] * x[..., None, :]).flatten(-2)  # [H, s, hd*hd]
    weight = coef.sum(-1)  # [H, t]
    first = coef @ x  # [H, t, hd] sum_s coef x_s
    scat = (coef @ outer).view(n, T, hd, hd)
    scat = (
        scat - first[..., :, None] * xbar[..., None, :] - xbar[..., :, None] * first[..., None, :]
    )
    scat = scat + weight[..., None, None] * xbar[..., :, None] * xbar[..., None, :]
    scat = 0.5 * (scat + scat.transpose(-1, -2))
    size = coef @ (x.norm(dim=-1) + xbar.norm(dim=-1).amax(-1, keepdim=True)).pow(2).unsqueeze(-1)
    return scat, 1e-10 * size[..., 0]


def _metric_top(metric: Tensor, slack: Tensor, scat: Tensor, rounding: Tensor) -> Tensor:
    """[H, t] >= lambda_max(A S_h,t A^T) = ||A S^(1/2)||^2 for a PSD scatter S (up to the
    rounding bound) and A with ||A y|| <= ||M y|| + slack_h ||y|| (metric M: [H, hd, hd], or
    [H, t, hd, hd] when it varies with t)."""
    m = metric if metric.dim() == 4 else metric[:, None]
    top = spectral_norm_upper_batched(m @ scat @ m.transpose(-1, -2), squarings=4)
    trace = torch.diagonal(scat, dim1=-2, dim2=-1).sum(-1).clamp_min(0.0) + rounding
    top = (top + rounding * torch.linalg.matrix_norm(m).pow(2)).sqrt()
    return (top + slack[:, None] * trace.sqrt()).pow(2)


def query_move_aligned(
    f: FoldedBlock,
    rot: Tensor,
    k: Tensor,
    p,
    moved_p,
    o_moved,
    pu,
    e_ts,
    centred: tuple,
    split: tuple,
) -> Tensor:
    """[H, t] >= the tube move of ||W_o,h Cov'_t R_t A_q,h|| from reweighting and from the values,
    for rows t (rot [t, hd, hd] = R_t; p, moved_p, pu, e_ts [H, t, s]; k [H, s, hd]; o_moved
    [H, t] >= lambda_max(sum_s moved_p a_s a_s^T), from output_spread), by
    Cauchy-Schwarz on its sums of rank-one terms: ||sum_s c_s a_s b_s^T|| <=
    sqrt(lambda_max(sum c a a^T) lambda_max(sum c b b^T)) with a_s = W_o,h (v_s - vbar_t),
    b_s = A_q,h^T R_t^T (k_s - kbar_t) and c = |p' - p| (reweighting), and
    ||sum_s p'_s x_s b_s^T|| <= sqrt(sum p'_s e_ts^2) sqrt(lambda_max(sum p' b b^T)) for the
    value moves ||x_s|| <= e_ts (the p'-weighted deviations sum to zero, so kbar_t may stay the
    centre's). centred: (coefficients, their output spread, drift term) of softmax.drift, the same
    Cauchy-Schwarz on the centred coefficients plus the drift on the centre's own sum. split:
    (own [H, t, s], mean [H, t]) with the value moves x_s = y_s - m, ||y_s|| <= own and
    ||sum_s p'_s m b_s^T|| <= mean (attention's query path), the own part by the same
    Cauchy-Schwarz."""
    turn = f.q_metric[:, None] @ rot.transpose(-1, -2)[None]  # [H, t, hd, hd] M_q R_t^T
    kbar = p @ k
    q_moved = _metric_top(turn, f.q_slack, *_scatter(moved_p, k, kbar))
    coef, o_centred, drift = centred
    q_centred = _metric_top(turn, f.q_slack, *_scatter(coef, k, kbar))
    reweight = torch.minimum(
        (o_moved * q_moved).sqrt(), (o_centred * q_centred).sqrt() * (1 + 1e-8) + drift
    )
    q_weighted = _metric_top(turn, f.q_slack, *_scatter(pu, k, kbar))
    values = ((pu * e_ts.pow(2)).sum(-1) * q_weighted).sqrt()
    own, mean = split
    values = torch.minimum(values, ((pu * own.pow(2)).sum(-1) * q_weighted).sqrt() + mean)
    return (reweight + values) * (1 + 1e-8)


def cross_traces(o_cross: Tensor, scat: Tensor) -> Tensor:
    """[t, h, g] >= ||S_h^(1/2) K_hg S_g^(1/2)||_F = sqrt(tr(S_h K_hg S_g K_gh)), scat: S [H, t, .].

    With L_hg = S_h K_hg (one matrix product per head against all K_h. at once), the trace is
    sum_ij (L_hg)_ij (L_gh)_ji. The products and the inner sums (64 terms) run in float32
    (memory-bound), the outer sum in float64: the error is below (2 x 64 + 64) x 2^-24
    ||S_h||_F ||S_g||_F ||K_hg||_F^2, covered by the margin of 1e-4 of that size. Rows t go
    in chunks of 32, which bounds the [H, t, hd, H, hd] intermediate."""
    if scat.shape[1] > 32:
        return torch.cat([cross_traces(o_cross, part) for part in scat.split(32, dim=1)])
    n, t, hd = scat.shape[0], scat.shape[1], scat.shape[-1]
    wide = o_cross.permute(0, 2, 1, 3).reshape(n, hd, n * hd).float()  # [h, i, (g, j)] = K_hg
    left = (scat.float() @ wide[:, None]).view(n, t, hd, n, hd)  # [h, t, i, g, j] = (L_hg)_ij
    partner = left.permute(3, 1, 4, 0, 2).contiguous()  # [h, t, i, g, j] = (L_gh)_ji
    # 64-term float32 sums, then float64 across them
    tr = (left * partner).sum(-1).sum(2, dtype=torch.float64)  # [h, t, g]
    s_f = torch.linalg.matrix_norm(scat)  # [h, t]
    size = s_f[:, :, None] * s_f.T[None] * torch.linalg.matrix_norm(o_cross).pow(2)[:, None]
    return (tr + 1e-4 * size).clamp_min(0.0).sqrt().permute(1, 0, 2)
