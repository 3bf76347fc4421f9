"""The attention rows' radius-free centre terms, computed once per prompt.

At the tube centre, per head h, query t and source s: the actual directions of the key and
query paths, ||A_k^T R_s^T q_t|| and ||A_q^T R_t^T (k_s - kbar_t)|| (RoPE rotations R), the
centred value deviations ||W_o,h (v_s - vbar_t)||, the query path's ||W_o,h Cov_t R_t A_q,h||
per head and with the heads combined by a Gram bound, and the Gram terms that combine the
value and key paths of all heads per source. Norms of the form ||A^T w|| use the folded
block's square metrics: ||A^T w|| <= ||M w|| + s ||w||. Notation of
blockcert.cert.lipschitz.attention. Derivation: docs/soundness.md#attention-rows.
"""

from __future__ import annotations

import torch

from blockcert.cert.lipschitz.attention_aligned import cross_traces
from blockcert.cert.lipschitz.folded import FoldedBlock
from blockcert.cert.lipschitz.margins import REL_MARGIN
from blockcert.cert.spectral import spectral_norm_upper_batched

Tensor = torch.Tensor


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


def centre_terms(f: FoldedBlock, cen: dict) -> dict:
    """The radius-free parts of the bounds at one prompt's centre, computed once and kept in
    cen (every shell and every pass of the block bound reuse them)."""
    if "attention" in cen:
        return cen["attention"]
    a = f.view.attention
    p, q, k, v = cen["p"], cen["q"], cen["k"], cen["v"]
    T = p.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    rot = rope_matrices(a.inv_freq, T, a.head_dim)
    # ||W_o (v_s - vbar_t)|| at the centre, in the metric of W_o,h (plus its slack)
    vt = torch.einsum("hij,htj->hti", f.o_metric, v)
    spread_v = torch.cdist(p @ v, v, compute_mode="donot_use_mm_for_euclid_dist")
    a_ts = torch.cdist(p @ vt, vt, compute_mode="donot_use_mm_for_euclid_dist")
    a_ts = (a_ts + f.o_slack[:, None, None] * spread_v) * (1 + REL_MARGIN)
    cen["attention"] = {
        "p": p,
        "causal": causal,
        "rot": rot,
        "key_dir": rotated_norms(f.k_metric, f.k_slack, q, rot).transpose(-1, -2),  # [H, t, s]
        # softmax ignores a shift of z_t. shared by all sources, so the query side of dz_ts
        # only needs ||A_q^T R_t^T (k_s - kbar_t)||
        "query_dir": centred_query_dir(f, k, p @ k, rot).masked_fill(~causal, 0.0),
        "a_ts": a_ts.masked_fill(~causal, 0.0),
        "query_centre": _query_centre(f, cen, vt, rot),
        **_gram_centre(f, p, v),
    }
    return cen["attention"]


def query_rows(c: dict, rows: Tensor) -> dict:
    """The centre terms of the query rows `rows` only (every [.., t, s] term indexed on t)."""
    out = dict(c)
    out["p"] = c["p"][:, rows]
    out["causal"], out["rot"] = c["causal"][rows], c["rot"][rows]
    for key in ("key_dir", "query_dir", "a_ts"):
        out[key] = c[key][:, rows]
    out["query_centre"] = c["query_centre"][:, rows]
    out["gram_dot"] = [term[:, rows] for term in c["gram_dot"]]
    out["gram_cross"] = [term[:, rows] for term in c["gram_cross"]]
    return out


def _gram_centre(f: FoldedBlock, p: Tensor, v: Tensor) -> dict:
    """Radius-free terms of _value_key_gram: per h, |w_h . w_g| and ||B_h^T w_g|| bounds at the
    centre ([g, t, s] each, w_h = W_o,h (v_s - vbar_t))."""
    vbar = p @ v  # [H, T, hd]
    size = vbar.norm(dim=-1)[:, :, None] + v.norm(dim=-1)[:, None, :]  # >= ||v_s - vbar_t||
    dots, crosses = [], []
    for h in range(p.shape[0]):  # every g at once
        rounding = 1e-12 * size[h][None] * size  # [g, t, s]
        dot = _centred_form(f.o_cross[h], v[h][None], vbar[h][None], v, vbar)
        dots.append(dot.abs() + rounding * torch.linalg.matrix_norm(f.o_cross[h])[:, None, None])
        quad = _centred_form(f.ov_cross[h], v, vbar, v, vbar).clamp_min(0.0)
        quad = quad + rounding * torch.linalg.matrix_norm(f.ov_cross[h])[:, None, None]
        crosses.append(quad.sqrt() + f.ov_cross_slack[h][:, None, None] * size)
    return {"gram_dot": dots, "gram_cross": crosses}


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


def _query_centre(f: FoldedBlock, cen: dict, vt: Tensor, rot: Tensor) -> Tensor:
    """[H, T] >= ||W_o,h Cov_t R_t A_q,h|| at the centre (vt: v in the metric of W_o,h)."""
    p, k, v = cen["p"], cen["k"], cen["v"]
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
    return centre + f.c_q[:, None] * (rounding + f.o_slack[:, None] * raw)


def centred_query_dir(f: FoldedBlock, k: Tensor, kbar: Tensor, rot: Tensor) -> Tensor:
    """[H, t, s] >= ||A_q,h^T R_t^T (k_s - kbar_t)||."""
    out = []
    for h in range(k.shape[0]):
        diff = k[h][None, :, :] - kbar[h][:, None, :]  # [t, s, hd]
        turned = torch.einsum("tba,tsb->tsa", rot, diff)
        out.append((turned @ f.q_metric[h].T).norm(dim=-1) + f.q_slack[h] * diff.norm(dim=-1))
    return torch.stack(out) * (1 + REL_MARGIN)


def query_combined(f: FoldedBlock, c: dict, cen: dict, rows: Tensor) -> Tensor:
    """[t] >= ||sum_h W_o,h Cov_h,t R_t A_q,h|| at the centre for the query rows t = rows.

    ||sum_h Q_h||^2 = ||sum_hg Q_h^T Q_g|| <= sum_hg N_hg with N_hh = ||Q_h||^2 (the per-head
    centre bound) and, for h != g, Q_h^T Q_g = A_q,h^T Z_hg A_q,g, Z_hg = (C_h R_t)^T K_hg
    (C_g R_t) with C the p-weighted covariance of (v, k) and K_hg = W_o,h^T W_o,g:
    N_hg <= ||M_h Z M_g^T||_F (+ the metrics' slack and C's rounding) = sqrt(tr(P_h K_hg P_g
    K_gh)) with P_h = U_h U_h^T, U_h = C_h R_t M_h^T (cross_traces). The heads' query terms point
    in different directions, so this is well below the per-head sum. Cached per row set.
    """
    key = ("query_combined", tuple(rows.tolist()))
    if key in c:
        return c[key]
    p, k, v = cen["p"][:, rows], cen["k"], cen["v"]
    n, t, hd = p.shape[0], p.shape[1], k.shape[-1]
    outer = (v[..., :, None] * k[..., None, :]).flatten(-2)  # [H, s, hd*hd]
    cov = (p @ outer).view(n, t, hd, hd) - (p @ v)[..., :, None] * (p @ k)[..., None, :]
    rc = 1e-10 * (p @ (v.norm(dim=-1) * k.norm(dim=-1))[..., None])[..., 0]  # [H, t] rounding
    turned = cov @ c["rot"][rows][None]  # [H, t, hd, hd] C R_t
    u = turned @ f.q_metric[:, None].transpose(-1, -2)  # U_h = C R_t M_h^T
    cross = cross_traces(f.o_cross, u @ u.transpose(-1, -2))  # [t, h, g]
    # slack of the metrics, C's rounding (moves Z by (rc_h ||C_g|| + rc_g ||C_h|| + rc_h rc_g)
    # ||K_hg||) and the float64 products (relative 1e-12), all through Frobenius norms
    t_f = (torch.linalg.matrix_norm(turned) + rc).T  # [t, H] >= ||C R_t||_F of the exact C
    k_f = torch.linalg.matrix_norm(f.o_cross)  # [H, H]
    m_f = torch.linalg.matrix_norm(f.q_metric) + f.q_slack  # [H]
    rc = rc.T
    z_f = t_f[:, :, None] * k_f * t_f[:, None, :]  # >= ||Z_hg||_F
    dz = (rc[:, :, None] * t_f[:, None, :] + t_f[:, :, None] * rc[:, None, :]) * k_f
    dz = dz + rc[:, :, None] * rc[:, None, :] * k_f + 1e-12 * z_f
    slack = f.q_slack[:, None] * m_f[None, :] + m_f[:, None] * f.q_slack[None, :]
    cross = cross + slack * z_f + m_f[:, None] * m_f[None, :] * dz
    eye = torch.eye(n, dtype=torch.bool)
    cross = cross.masked_fill(eye, 0.0)  # the diagonal is the per-head bound, squared below
    total = cross.sum((-2, -1)) + c["query_centre"][:, rows].pow(2).sum(0)
    c[key] = total.sqrt() * (1 + REL_MARGIN)
    return c[key]
