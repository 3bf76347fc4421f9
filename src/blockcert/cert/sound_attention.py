"""Sound row-sum bound of the attention sub-layer's Jacobian over a tube (exact arithmetic).

Notation of blockcert.cert.lipschitz_sound: u_s = xhat_s (normalised input, gamma folded into
A_q, A_k, A_v), lambda_s >= 1/rho on the tube, sigma = rope_scaling, R_t the RoPE rotation at
position t (R = I without RoPE), q_t = sigma R_t A_q u_t, k_s likewise, z_ts = scale q_t . k_s.
For head h, query t and source s the Jacobian d O_t / d u_s is

  value  p_ts W_o A_v                                       norm  p_ts ||W_o A_v||
  key    p_ts W_o (v_s - vbar_t) (scale sigma A_k^T R_s^T q_t)^T   (rank one)
         norm   p_ts ||W_o (v_s - vbar_t)|| scale sigma ||A_k^T R_s^T q_t||
  query  (s = t) scale sigma W_o Cov_t R_t A_q, Cov_t = sum_s p_ts (v_s - vbar_t) k_s^T

so the key and query paths use the actual directions of q_t and k_s relative to the other
projection (||A_k^T R_s^T q_t|| <= ||q_t|| ||A_k||, often far below it), following the
per-source decomposition of Kim et al. 2021 ("The Lipschitz constant of self-attention") and
the row-sum (inf-2) norm of nfp. Over the tube every centre value is inflated soundly:
||u'_s - u_s|| <= lambda_s r, so |z'_ts - z_ts| <= Delta_ts := scale sigma (||A_q^T R_t^T k_s||
lambda_t r + ||A_k^T R_s^T q_t|| lambda_s r) + scale dq_t dk_s, where k_s may be centred at the
centre's kbar_t on the query side (softmax ignores a shift common to all sources); with
Omega_t = log sum_s p_ts e^(Delta_ts) (Jensen bounds the softmax normaliser's move by it, and it
is at most Delta_t = max_s Delta_ts), p'_ts / p_ts lies in [e^-(Delta_ts + Omega_t),
e^(Delta_ts + Omega_t)], ||p' - p||_1 <= min(2, Delta_t) (Popoviciu), and each norm moves by
at most the product of the moved vector's bound and the other factor's spectral norm (interval
view of Shi et al. 2020, "Robustness verification for transformers"). Value and key paths of
all heads are combined per source through their Gram bound ||sum_i Z_i||^2 <= sum_ij ||Z_i^T Z_j||
(heads write to nearly orthogonal subspaces, so this is far below the sum over heads); the
query path (s = t only) adds per head.

Norms of the form ||A^T w|| use a square metric M (M^T M = A A^T, blockcert.cert.lipschitz_sound
._metric): ||A^T w|| <= ||M w|| + s ||w||, with s covering the eigendecomposition's rounding.
"""

from __future__ import annotations

import torch

from blockcert.cert.spectral import spectral_norm_upper_batched

Tensor = torch.Tensor

REL_MARGIN = 1e-9  # float64 rounding of the bound's own arithmetic (relative)


def rope_matrices(inv_freq: Tensor | None, length: int, head_dim: int) -> Tensor:
    """R_t [T, hd, hd] of HF rotate_half RoPE (identity without RoPE), in float64."""
    eye = torch.eye(head_dim, dtype=torch.float64)
    if inv_freq is None:
        return eye.expand(length, head_dim, head_dim)
    pos = torch.arange(length, dtype=torch.float64)
    freqs = pos[:, None] * inv_freq.double()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    half = head_dim // 2
    turn = torch.zeros(head_dim, head_dim, dtype=torch.float64)  # rotate_half as a matrix
    turn[torch.arange(half), torch.arange(half) + half] = -1.0
    turn[torch.arange(half) + half, torch.arange(half)] = 1.0
    return torch.diag_embed(emb.cos()) + torch.diag_embed(emb.sin()) @ turn


def rotated_norms(metric: Tensor, slack: Tensor, vec: Tensor, rot: Tensor) -> Tensor:
    """N[h, i, j] >= ||A_h^T R_i^T vec_h,j|| (metric [H, hd, hd], vec [H, T, hd], rot [T, ..])."""
    out = []
    for h in range(vec.shape[0]):
        turned = torch.einsum("iba,jb->ija", rot, vec[h])  # R_i^T vec_j
        out.append((turned @ metric[h].T).norm(dim=-1))
    return (torch.stack(out) + slack[:, None, None] * vec.norm(dim=-1)[:, None, :]) * (
        1 + REL_MARGIN
    )


def attention_rows(f, cen: dict, lam: Tensor, r: float) -> tuple[Tensor, Tensor]:
    """(Latt_t, move_t) [T]: Latt_t >= sum_s ||d attn_out_t / d x_s|| at every point of the tube
    of radius r, and move_t >= ||attn_out(X')_t - attn_out(X)_t|| for every X' in it.

    f: the folded block (lipschitz_sound._Folded), cen: its float64 centre values, lam [T].
    """
    a = f.view.attention
    p, q, k, v = cen["p"], cen["q"], cen["k"], cen["v"]
    T = p.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scale, sigma = abs(a.scale), f.sigma
    rot = rope_matrices(a.inv_freq, T, a.head_dim)
    key_dir = rotated_norms(f.k_metric, f.k_slack, q, rot).transpose(-1, -2)  # [H, t, s]
    # softmax ignores a shift of z_t. shared by all sources, so the query side of dz_ts only
    # needs ||A_q^T R_t^T (k_s - kbar_t)||
    query_dir = _centred_query_dir(f, k, p @ k, rot).masked_fill(~causal, 0.0)  # [H, t, s]
    dq = sigma * f.c_q[:, None] * lam[None, :] * r  # [H, T] ||q'_t - q_t||
    dk = sigma * f.c_k[:, None] * lam[None, :] * r  # [H, T] ||k'_s - k_s||
    shift = scale * sigma * r * (query_dir * lam[None, :, None] + key_dir * lam[None, None, :])
    shift = shift + scale * dq[:, :, None] * dk[:, None, :]
    delta = shift.masked_fill(~causal, 0.0).amax(-1) * (1 + REL_MARGIN)  # [H, T]
    # z' - z = e_ts in [-Delta_ts, Delta_ts], p'_ts / p_ts = e^(e_ts) / sum_u p_tu e^(e_tu), and
    # by Jensen e^(-sum_u p_tu Delta_tu) <= sum_u p_tu e^(e_tu) <= e^(Omega_t) with
    # Omega_t = log sum_u p_tu e^(Delta_tu) (>= the p-mean of Delta, <= its max), so
    # p'_ts / p_ts lies in [1/grow_ts, grow_ts] with grow_ts = e^(Delta_ts + Omega_t)
    # (in log space, so no exponent overflows; Omega >= 0 exactly, and the clamp and margins
    # cover the float64 rounding of p, exp and log)
    shift = shift.masked_fill(~causal, 0.0) * (1 + REL_MARGIN)
    log_p = torch.log(p)  # -inf where p = 0
    omega = torch.logsumexp(log_p + shift, dim=-1).clamp_min(0.0) * (1 + REL_MARGIN) + 1e-12
    log_grow = shift + torch.minimum(omega, delta)[..., None]
    pu = torch.exp((log_p + log_grow).clamp_max(0.0)).masked_fill(~causal, 0.0)  # >= p'
    moved = torch.minimum(p * torch.expm1(log_grow), torch.ones_like(p))
    moved_p = torch.where(p > 0, moved, 0.0).masked_fill(~causal, 0.0)  # >= |p' - p|
    dp1 = delta.clamp_max(2.0)  # ||p' - p||_1
    # ||W_o (v_s - vbar_t)|| at the centre, in the metric of W_o,h (plus its slack)
    vt = torch.einsum("hij,htj->hti", f.o_metric, v)
    vbar_t = p @ vt
    spread_v = torch.cdist(p @ v, v, compute_mode="donot_use_mm_for_euclid_dist")
    a_ts = torch.cdist(vbar_t, vt, compute_mode="donot_use_mm_for_euclid_dist")
    a_ts = ((a_ts + f.o_slack[:, None, None] * spread_v) * (1 + REL_MARGIN)).masked_fill(
        ~causal, 0.0
    )
    lam_s = lam[None, None, :]
    # how far W_o (v_s - vbar_t) moves on the tube
    ev_s = f.c_ov[:, None, None] * lam_s * r
    mean_lam = torch.minimum((pu * lam_s).sum(-1), lam.max().expand_as(delta))
    reweighted = torch.minimum(dp1 * a_ts.amax(-1), (moved_p * a_ts).sum(-1))
    ev_bar = f.c_ov[:, None] * r * mean_lam + reweighted
    e_ts = (ev_s + ev_bar[..., None]).masked_fill(~causal, 0.0)
    a_up = a_ts + e_ts
    beta = pu * scale * sigma * (key_dir + f.c_k[:, None, None] * dq[:, :, None])  # key coef
    triangle = (f.c_ov[:, None] * mean_lam).sum(0) + (beta * a_up * lam_s).sum(-1).sum(0)
    gram = _value_key_gram(f, cen["p"], v, pu, beta, a_ts, e_ts)
    value_key = torch.minimum(triangle, (gram.sqrt() * lam[None, :]).sum(-1))
    query = (
        scale
        * sigma
        * lam[None, :]
        * _query_norm(f, cen, rot, query_dir, pu, moved_p, delta, a_ts, a_up, dk)
    )
    return (value_key + query.sum(0)) * (1 + REL_MARGIN), ev_bar.sum(0) * (1 + REL_MARGIN)


def _value_key_gram(f, p, v, pu, beta, a_ts, e_ts) -> Tensor:
    """[t, s] >= ||sum_h (value_h + key_h)||^2 on the tube, heads combined per source.

    Components X_h = p'_h W_o,h A_v,h (value) and Y_h = beta_h w'_h u_h^T (key, w_h =
    W_o,h (v_s - vbar_t), ||u_h|| = 1 after beta): ||sum X + sum Y||^2 = ||sum_ij Z_i^T Z_j||
    <= sum_ij ||Z_i^T Z_j||, with ||X_h^T X_g|| <= p'_h p'_g N_hg, ||X_h^T Y_g|| <= p'_h beta_g
    ||B_h^T w'_g|| and ||Y_h^T Y_g|| <= beta_h beta_g |w'_h . w'_g|. Tube: ||w'_h - w_h|| <= e_h.
    """
    n = p.shape[0]
    vbar = p @ v  # [H, T, hd]
    vn, vbn = v.norm(dim=-1), vbar.norm(dim=-1)
    size = vbn[:, :, None] + vn[:, None, :]  # [H, t, s] >= ||v_s - vbar_t||
    total = torch.einsum("hts,hg,gts->ts", pu, f.ov_gram, pu)
    for h in range(n):  # every g at once
        rounding = 1e-12 * size[h][None] * size  # [g, t, s]
        dot = _centred_form(f.o_cross[h], v[h][None], vbar[h][None], v, vbar)
        dot = dot.abs() + rounding * torch.linalg.matrix_norm(f.o_cross[h])[:, None, None]
        dot = dot + e_ts[h][None] * a_ts + a_ts[h][None] * e_ts + e_ts[h][None] * e_ts
        quad = _centred_form(f.ov_cross[h], v, vbar, v, vbar).clamp_min(0.0)
        quad = quad + rounding * torch.linalg.matrix_norm(f.ov_cross[h])[:, None, None]
        cross = quad.sqrt() + f.ov_cross_slack[h][:, None, None] * size + f.c_ov[h] * e_ts
        total = total + beta[h] * (beta * dot).sum(0) + 2 * pu[h] * (beta * cross).sum(0)
    return total * (1 + REL_MARGIN)


def _centred_form(mat: Tensor, v1: Tensor, vbar1: Tensor, v2: Tensor, vbar2: Tensor) -> Tensor:
    """[g, t, s] = (v1_s - vbar1_t)^T mat_g (v2_s - vbar2_t), expanded into matrix products
    (mat [g, i, j]; v1, vbar1 [g or 1, T, i]; v2, vbar2 [g, T, j])."""
    left, left_bar = v1 @ mat, vbar1 @ mat  # [g, s, j], [g, t, j]
    diag = (left * v2).sum(-1)  # [g, s]
    return (
        diag[:, None, :]
        - vbar2 @ left.transpose(-1, -2)
        - left_bar @ v2.transpose(-1, -2)
        + (left_bar * vbar2).sum(-1)[:, :, None]
    )


def _query_norm(f, cen, rot, q_side, pu, moved_p, delta, a_ts, a_up, dk) -> Tensor:
    """[H, T] >= ||W_o,h Cov'_t R_t A_q,h|| on the tube.

    Cov'_t = sum_s p'_ts (v'_s - vbar'_t)(k'_s - kbar_t)^T for the CENTRE mean kbar_t (the
    weights (v' - vbar') sum to zero under p'), so every source contributes a rank-one term
    whose A_q side is ||A_q^T R_t^T (k_s - kbar_t)|| (+ ||A_q|| ||k'_s - k_s||).
    """
    p, k, v = cen["p"], cen["k"], cen["v"]
    vt = torch.einsum("hij,htj->hti", f.o_metric, v)
    vbar_t, kbar = p @ vt, p @ k
    outer = (vt[..., :, None] * k[..., None, :]).flatten(-2)  # [H, T, hd*hd]
    cov = (p @ outer).view(*p.shape[:2], vt.shape[-1], k.shape[-1])
    cov = cov - vbar_t[..., :, None] * kbar[..., None, :]  # M_h Cov_t
    size = (p @ (vt.norm(dim=-1) * k.norm(dim=-1)).unsqueeze(-1))[..., 0]
    rounding = 1e-10 * size  # of the uncentred sums above
    exact = spectral_norm_upper_batched((cov @ rot[None]) @ f.q_metric.transpose(-1, -2)[:, None])
    # q_slack is eigendecomposition rounding (~1e-8 relative): Frobenius (>= spectral) suffices
    plain = torch.linalg.matrix_norm(cov) * (1 + REL_MARGIN) + rounding
    raw = (p * torch.cdist(kbar, k) * torch.cdist(p @ v, v)).sum(-1)  # >= ||Cov_t||
    centre = exact + f.q_slack[:, None] * plain
    centre = centre + f.c_q[:, None] * (rounding + f.o_slack[:, None] * raw)
    aq = a_ts * q_side
    reweight = torch.minimum(delta.clamp_max(2.0) * aq.amax(-1), (moved_p * aq).sum(-1))
    e_ts = a_up - a_ts
    k_move = f.c_q[:, None, None] * dk[:, None, :]
    moved = reweight + (pu * (e_ts * q_side + a_up * k_move)).sum(-1)
    direct = (pu * a_up * (q_side + k_move)).sum(-1)
    return torch.minimum(centre + moved, direct)


def _centred_query_dir(f, k: Tensor, kbar: Tensor, rot: Tensor) -> Tensor:
    """[H, t, s] >= ||A_q,h^T R_t^T (k_s - kbar_t)||."""
    out = []
    for h in range(k.shape[0]):
        diff = k[h][None, :, :] - kbar[h][:, None, :]  # [t, s, hd]
        turned = torch.einsum("tba,tsb->tsa", rot, diff)
        out.append((turned @ f.q_metric[h].T).norm(dim=-1) + f.q_slack[h] * diff.norm(dim=-1))
    return torch.stack(out) * (1 + REL_MARGIN)
