"""Sound bound of the attention sub-layer's Jacobian rows over a tube (exact arithmetic).

The quantity bounded is the operator norm of row t for the block metric (max over tokens of
l2): ||J_t||_(inf,2) = sup_(||dx_s|| <= 1) ||sum_s J_ts dx_s|| = max_(||u|| = 1) sum_s ||J_ts^T u||,
at most the row sum sum_s ||J_ts|| of nfp.

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
view of Shi et al. 2020, "Robustness verification for transformers"). Sums of the centred
value deviations sum_s (p'_ts - p_ts) W_o (v_s - vbar_t) (the mean's reweighting) take the
coefficients p_ts (e^(Delta_ts) - 1) e^(sum_s p_ts Delta_ts) instead of |p' - p| (_centred:
they carry no normaliser term Omega_t), and on the aligned rows also Cauchy-Schwarz over the
sources. Value and key paths of
all heads are combined per source through their Gram bound ||sum_i Z_i||^2 <= sum_ij ||Z_i^T Z_j||
(heads write to nearly orthogonal subspaces, so this is far below the sum over heads); the
query path (s = t only) adds per head. On the tokens that can decide the max (the `aligned`
rows), value and key paths are also bounded apart: the value path per source by the same Gram
bound, and the rank-one key terms jointly over heads and sources by Cauchy-Schwarz in the output
direction u (_key_path_aligned): sum_(h,s) c_hs |u . w_hs| <= sqrt(sum c) sqrt(lambda_max(sum c
w w^T)) (deviations w_hs = W_o,h (v_s - vbar_t) point in many directions, so this is well below
sum c ||w||); the reweighting part of the output's move gets the same treatment with |p' - p|.
The query path on those rows: its tube move by Cauchy-Schwarz on the rank-one sums of Cov'_t
(_query_move_aligned), and its centre with the heads combined through the Gram bound
||sum_h Q_h||^2 <= sum_hg ||Q_h^T Q_g|| (_query_combined) instead of the per-head sum.

The rows that can decide the max can also get the joint bound of
blockcert.cert.sound_attention_joint (all paths, heads and sources of a row together).

Norms of the form ||A^T w|| use a square metric M (M^T M = A A^T, blockcert.cert.lipschitz_sound
._metric): ||A^T w|| <= ||M w|| + s ||w||, with s covering the eigendecomposition's rounding.
"""

from __future__ import annotations

import torch

from blockcert.cert import sound_attention_joint as joint
from blockcert.cert.spectral import perron_root_upper, spectral_norm_upper_batched

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


def attention_rows(
    f,
    cen: dict,
    lam: Tensor,
    r: float,
    aligned: Tensor | None = None,
    lam_centre: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(Latt_t, move_t) [t]: Latt_t >= max_(||u|| = 1) sum_s ||(d attn_out_t / d x_s)^T u|| (the
    operator norm of row t from max_s ||dx_s|| to ||.||; at most the row sum of norms) at every
    point of the tube of radius r, and move_t >= ||attn_out(X')_t - attn_out(X)_t|| for every X'
    in it.

    f: the folded block (lipschitz_sound._Folded), cen: its float64 centre values, lam [T];
    aligned: None for every query row with the per-source bounds, or the query rows t to bound
    (outputs [len(aligned)]), which also get the costlier Cauchy-Schwarz bounds of
    _key_path_aligned (the per-source bounds hold as well; each row takes the smaller).
    lam_centre [T] (the centre's lambda): the aligned rows get the joint bound of
    blockcert.cert.sound_attention_joint (value, key and query paths of all sources together)
    and the aligned moves, but not the aligned key and combined query bounds (the caller takes
    the smaller of this and an earlier pass's bounds).
    """
    a = f.view.attention
    c = _centre(f, cen)
    if aligned is not None:
        c = _query_rows(c, aligned)
    p, v = c["p"], cen["v"]
    causal, key_dir, query_dir, a_ts = c["causal"], c["key_dir"], c["query_dir"], c["a_ts"]
    scale, sigma = abs(a.scale), f.sigma
    lam_t = lam if aligned is None else lam[aligned]
    dq = sigma * f.c_q[:, None] * lam_t[None, :] * r  # [H, t] ||q'_t - q_t||
    dk = sigma * f.c_k[:, None] * lam[None, :] * r  # [H, s] ||k'_s - k_s||
    shift = scale * sigma * r * (query_dir * lam_t[None, :, None] + key_dir * lam[None, None, :])
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
    lam_s = lam[None, None, :]
    # how far W_o (v_s - vbar_t) moves on the tube
    ev_s = f.c_ov[:, None, None] * lam_s * r
    mean_lam = torch.minimum((pu * lam_s).sum(-1), lam.max().expand_as(delta))
    # sums of the centred deviations w_s = W_o (v_s - vbar_t) (sum_s p_ts w_s = 0) may take
    # centred_p >= |e^(-Omega') p_s (e^(e_s) - 1)| as coefficients instead of |p' - p| (_centred)
    # (rows where one exceeds 1, at radii near the tokens' norms, do not use them: |p' - p| <= 1)
    centred_p = _centred(log_p, p, shift).masked_fill(~causal, 0.0)
    centred_ok = (centred_p <= 1.0).all(-1)  # [H, t]
    centred_p = centred_p.masked_fill(~centred_ok[..., None], 0.0)
    has_rows = aligned is not None and len(aligned) > 0
    reweighted = torch.minimum(dp1 * a_ts.amax(-1), (moved_p * a_ts).sum(-1))
    centred_sum = (centred_p * a_ts).sum(-1).masked_fill(~centred_ok, torch.inf)
    reweighted = torch.minimum(reweighted, centred_sum)
    if has_rows:  # ||sum_s c_s w_s|| <= sqrt(sum_s c_s) sqrt(lambda_max(sum_s c_s w_s w_s^T))
        moved_spread = _output_spread(f, v, p, moved_p)
        centred_spread = _output_spread(f, v, p, centred_p)
        moved_sum = (moved_p.sum(-1) * moved_spread[1]).sqrt() * (1 + REL_MARGIN)
        centred_sum = (centred_p.sum(-1) * centred_spread[1]).sqrt() * (1 + REL_MARGIN)
        centred_sum = centred_sum.masked_fill(~centred_ok, torch.inf)
        reweighted = torch.minimum(reweighted, torch.minimum(moved_sum, centred_sum))
    ev_bar = f.c_ov[:, None] * r * mean_lam + reweighted
    e_ts = (ev_s + ev_bar[..., None]).masked_fill(~causal, 0.0)
    a_up = a_ts + e_ts
    beta = pu * scale * sigma * (key_dir + f.c_k[:, None, None] * dq[:, :, None])  # key coef
    triangle = (f.c_ov[:, None] * mean_lam).sum(0) + (beta * a_up * lam_s).sum(-1).sum(0)
    gram = _value_key_gram(f, c, pu, beta, a_ts, e_ts)
    value_key = torch.minimum(triangle, (gram.sqrt() * lam[None, :]).sum(-1))
    # per source, value and key paths apart: ||J_ts^T u|| <= ||sum_h p'_hts B_h|| lambda_s +
    # sum_h coef_hts |u . W_o,h (v'_s - vbar'_t)|, the second aligned over (h, s) below
    value = (torch.einsum("hts,hg,gts->ts", pu, f.ov_gram, pu) * (1 + REL_MARGIN)).sqrt()
    values_move = torch.minimum((f.c_ov[:, None] * mean_lam).sum(0), (value * lam_s[0]).sum(-1)) * r
    move = ev_bar.sum(0)
    # query path per head: ||Q'_h|| <= min(||Q_h|| + ||Q'_h - Q_h||, direct)
    # the query path's reweighting sum_s (p' - p)_s X_s is not centred (sum_s p_s X_s = Q_h, the
    # query path itself): _drift
    drift = _drift(p, shift, omega) * c["query_centre"]
    centred_query = (centred_p, drift.masked_fill(~centred_ok, torch.inf))
    # the value moves under it split into each source's own, W_o (v'_s - v_s) (<= ev_s), and
    # the mean's, W_o (vbar'_t - vbar_t) (<= ev_bar), common to all sources: sum_s p'_s b_s =
    # sum_s (p'_s - p_s) b_s (b_s = A_q^T R_t^T (k_s - kbar_t) sums to zero under p), so the
    # mean's part is at most ev_bar times that centred sum's norm
    mean_shift = torch.minimum(dp1 * query_dir.amax(-1), (moved_p * query_dir).sum(-1)).minimum(
        (centred_p * query_dir).sum(-1).masked_fill(~centred_ok, torch.inf)
    )
    split_moves = (ev_s.expand_as(a_ts).masked_fill(~causal, 0.0), ev_bar * mean_shift)
    q_moved, q_direct, q_reweight = _query_moves(
        f, query_dir, pu, moved_p, delta, a_ts, a_up, dk, centred_query, split_moves
    )
    joint_pass = has_rows and lam_centre is not None
    if has_rows and not joint_pass:  # the joint pass's caller keeps these from an earlier pass
        coef = beta * lam_s  # [H, t, s] >= p'_ts ||kappa'_ts|| lambda_s
        key = _key_path_aligned(f, coef, _output_spread(f, v, p, coef))
        key = key + (coef * e_ts).sum((0, -1))
        value_key = torch.minimum(value_key, (value * lam[None, :]).sum(-1) + key)
    if has_rows:
        # the output moves by sum_h W_o,h [sum_s p'_ts (v'_s - v_s) + sum_s (p'_ts - p_ts)
        # (v_s - vbar_t)]: values, then the reweighting aligned like the key path
        centred_move = _key_path_aligned(f, centred_p, centred_spread)
        centred_move = centred_move.where(centred_ok.all(0), torch.inf)
        reweight = torch.minimum(_key_path_aligned(f, moved_p, moved_spread), centred_move)
        move = torch.minimum(move, values_move + reweight)
        k_move = f.c_q[:, None, None] * dk[:, None, :]
        keys_moved = (pu * a_up * k_move).sum(-1)
        centred_aligned = (centred_p, centred_spread[1], centred_query[1])
        q_aligned = _query_move_aligned(
            f,
            c["rot"],
            cen["k"],
            p,
            moved_p,
            moved_spread[1],
            pu,
            e_ts,
            centred_aligned,
            split_moves,
        )
        q_moved = torch.minimum(q_moved, q_aligned + keys_moved)
    query = torch.minimum(c["query_centre"] + q_moved, q_direct).sum(0)  # [t]
    if has_rows and not joint_pass:
        # heads combined at the centre: ||sum_h Q'_h|| <= ||sum_h Q_h|| + sum_h ||Q'_h - Q_h||
        combined = _query_combined(f, _centre(f, cen), cen, aligned) + q_moved.sum(0)
        query = torch.minimum(query, combined)
    query = scale * sigma * lam_t * query
    rows_bound = value_key + query
    if joint_pass:
        full = _centre(f, cen)
        weights = joint.source_weights(f, c, aligned, lam_centre)
        centre = joint.centre_rows(f, cen, full["rot"], aligned, weights, lam_centre)
        key_up = scale * sigma * (key_dir + f.c_k[:, None, None] * dq[:, :, None])
        # the reweighted key terms at the centre's deviations, aligned over (h, s) like the key
        # path: sum moved_p key_up lambda_s |u . W_o,h (v_s - vbar_t)|
        coef = moved_p * key_up * lam_s
        reweighted_keys = torch.minimum(
            (coef * a_ts).sum((0, -1)), _key_path_aligned(f, coef, _output_spread(f, v, p, coef))
        )
        # the query path's move with its heads combined like the key path's value moves:
        # ||sum_h (Q'_h - Q_h)|| <= reweighting + value moves (coef p' ||A_q^T R^T (k_s - kbar)||)
        # + key moves, against the per-head sum
        q_side = pu * query_dir
        q_heads = q_reweight.sum(0) + joint.value_moves(f, q_side, pu, lam, r, reweighted)
        q_heads = q_heads + keys_moved.sum(0)
        query_move = torch.minimum(q_moved.sum(0), q_heads)
        # the mean's reweighting under the key terms, sum_h C_h |u . W_o,h sum_s (p' - p)_hs
        # (v_s - vbar_t)| with C_h the key coefficients' total (tube_sources), aligned over
        # (h, s) with the centred coefficients C_h centred_p_hs
        key_total = ((p + moved_p) * key_up * lam_s).sum(-1, keepdim=True)  # [H, t, 1]
        coef = key_total * centred_p
        mean_reweighting = _key_path_aligned(f, coef, _output_spread(f, v, p, coef))
        mean_reweighting = mean_reweighting.where(centred_ok.all(0), torch.inf)
        tube = joint.tube_sources(
            f,
            aligned,
            p,
            moved_p,
            pu,
            a_ts,
            key_up,
            dq,
            query_move,
            lam,
            r,
            reweighted,
            reweighted_keys,
            mean_reweighting,
        )
        # lambda grows on the tube: sum_s lambda'_s ||J_ts^T u|| <= max_s (lambda'_s / lambda_s)
        # times the centre's sum
        grow = (lam / lam_centre).max() * (1 + REL_MARGIN)
        rows_bound = torch.minimum(rows_bound, grow * centre + tube)
    return rows_bound * (1 + REL_MARGIN), move * (1 + REL_MARGIN)


def _centred(log_p: Tensor, p: Tensor, shift: Tensor) -> Tensor:
    """[H, t, s] coefficients for sums of centred deviations (sum_s p_ts w_s = 0) on the tube.

    With e_s = z'_s - z_s (|e_s| <= Delta_s = shift) and Omega' = log sum_s p_s e^(e_s), p'_s =
    p_s e^(e_s - Omega'), so sum_s (p'_s - p_s) w_s = e^(-Omega') sum_s p_s (e^(e_s) - 1) w_s
    (twice sum_s p_s w_s = 0), and e^(-Omega') <= e^(sum_s p_s Delta_s) (Jensen), |e^(e_s) - 1|
    <= e^(Delta_s) - 1: the coefficient p_s (e^(Delta_s) - 1) e^(p . Delta) has no normaliser
    term, where |p' - p| <= p (e^(Delta_s + Omega) - 1) has one (about half of it for even
    shifts). Log space, like the weights' own bounds."""
    mean = (p * shift).sum(-1, keepdim=True)
    return torch.exp(log_p + torch.log(torch.expm1(shift)) + mean) * (1 + REL_MARGIN)


def _drift(p: Tensor, shift: Tensor, omega: Tensor) -> Tensor:
    """[H, t] >= |e^(-Omega') - 1| on the tube, for sums that are not centred.

    With p'_s = p_s e^(e_s - Omega') (_centred), sum_s (p'_s - p_s) X_s = e^(-Omega') sum_s p_s
    (e^(e_s) - 1) X_s + (e^(-Omega') - 1) sum_s p_s X_s: the _centred coefficients on the
    sources and this drift on the centre's own sum (often far below sum_s p_s ||X_s||). Omega' =
    log sum_s p_s e^(e_s) lies in [-p . Delta, omega] (Jensen; omega >= log sum_s p_s e^(Delta_s)).
    """
    low = torch.expm1((p * shift).sum(-1))  # e^(p . Delta) - 1
    return torch.maximum(low, -torch.expm1(-omega)) * (1 + REL_MARGIN)


def _query_combined(f, c: dict, cen: dict, rows: Tensor) -> Tensor:
    """[t] >= ||sum_h W_o,h Cov_h,t R_t A_q,h|| at the centre for the query rows t = rows.

    ||sum_h Q_h||^2 = ||sum_hg Q_h^T Q_g|| <= sum_hg N_hg with N_hh = ||Q_h||^2 (the per-head
    centre bound) and, for h != g, Q_h^T Q_g = A_q,h^T Z_hg A_q,g, Z_hg = (C_h R_t)^T K_hg
    (C_g R_t) with C the p-weighted covariance of (v, k) and K_hg = W_o,h^T W_o,g:
    N_hg <= ||M_h Z M_g^T||_F (+ the metrics' slack and C's rounding) = sqrt(tr(P_h K_hg P_g
    K_gh)) with P_h = U_h U_h^T, U_h = C_h R_t M_h^T (_cross_traces). The heads' query terms point
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
    cross = _cross_traces(f.o_cross, u @ u.transpose(-1, -2))  # [t, h, g]
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


def _centre(f, cen: dict) -> dict:
    """The radius-free parts of the bounds at one prompt's centre, computed once and kept in
    cen (every shell and both passes of lipschitz_sound reuse them)."""
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
        "query_dir": _centred_query_dir(f, k, p @ k, rot).masked_fill(~causal, 0.0),
        "a_ts": a_ts.masked_fill(~causal, 0.0),
        "query_centre": _query_centre(f, cen, vt, rot),
        **_gram_centre(f, p, v),
    }
    return cen["attention"]


def _query_rows(c: dict, rows: Tensor) -> dict:
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


def _key_path_aligned(f, coef: Tensor, spread: tuple[Tensor, Tensor]) -> Tensor:
    """[T] >= max_(||u|| = 1) sum_(h, s) coef_hts |u . W_o,h (v_s - vbar_t)| (centre vectors);
    spread: _output_spread of coef.

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
    cross = _cross_traces(f.o_cross, scat)
    eye = torch.eye(n, dtype=torch.bool)
    mat = torch.where(eye, diag.T[:, :, None].expand(T, n, n), cross)  # [t, h, g]
    mat = torch.maximum(mat, mat.transpose(-1, -2))
    start = torch.ones(T, n, dtype=torch.float64)
    top = perron_root_upper(lambda x: (mat @ x[..., None])[..., 0], start, 20)  # [t]
    return (coef.sum((0, -1)) * top).clamp_min(0.0).sqrt() * (1 + 1e-8)


def _output_spread(f, v: Tensor, p: Tensor, coef: Tensor) -> tuple[Tensor, Tensor]:
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


def _query_move_aligned(
    f, rot: Tensor, k: Tensor, p, moved_p, o_moved, pu, e_ts, centred: tuple, split: tuple
) -> Tensor:
    """[H, t] >= the tube move of ||W_o,h Cov'_t R_t A_q,h|| from reweighting and from the values,
    for rows t (rot [t, hd, hd] = R_t; p, moved_p, pu, e_ts [H, t, s]; k [H, s, hd]; o_moved
    [H, t] >= lambda_max(sum_s moved_p a_s a_s^T), from _output_spread), by
    Cauchy-Schwarz on its sums of rank-one terms: ||sum_s c_s a_s b_s^T|| <=
    sqrt(lambda_max(sum c a a^T) lambda_max(sum c b b^T)) with a_s = W_o,h (v_s - vbar_t),
    b_s = A_q,h^T R_t^T (k_s - kbar_t) and c = |p' - p| (reweighting), and
    ||sum_s p'_s x_s b_s^T|| <= sqrt(sum p'_s e_ts^2) sqrt(lambda_max(sum p' b b^T)) for the
    value moves ||x_s|| <= e_ts (the p'-weighted deviations sum to zero, so kbar_t may stay the
    centre's). centred: (coefficients, their output spread, drift term) of _drift, the same
    Cauchy-Schwarz on the centred coefficients plus the drift on the centre's own sum. split:
    (own [H, t, s], mean [H, t]) with the value moves x_s = y_s - m, ||y_s|| <= own and
    ||sum_s p'_s m b_s^T|| <= mean (_query_moves), the own part by the same Cauchy-Schwarz."""
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


def _cross_traces(o_cross: Tensor, scat: Tensor) -> Tensor:
    """[t, h, g] >= ||S_h^(1/2) K_hg S_g^(1/2)||_F = sqrt(tr(S_h K_hg S_g K_gh)), scat: S [H, t, .].

    With L_hg = S_h K_hg (one matrix product per head against all K_h. at once), the trace is
    sum_ij (L_hg)_ij (L_gh)_ji. The products and the inner sums (64 terms) run in float32
    (memory-bound), the outer sum in float64: the error is below (2 x 64 + 64) x 2^-24
    ||S_h||_F ||S_g||_F ||K_hg||_F^2, covered by the margin of 1e-4 of that size. Rows t go
    in chunks of 32, which bounds the [H, t, hd, H, hd] intermediate."""
    if scat.shape[1] > 32:
        return torch.cat([_cross_traces(o_cross, part) for part in scat.split(32, dim=1)])
    n, t, hd = scat.shape[0], scat.shape[1], scat.shape[-1]
    wide = o_cross.permute(0, 2, 1, 3).reshape(n, hd, n * hd).float()  # [h, i, (g, j)] = K_hg
    left = (scat.float() @ wide[:, None]).view(n, t, hd, n, hd)  # [h, t, i, g, j] = (L_hg)_ij
    partner = left.permute(3, 1, 4, 0, 2).contiguous()  # [h, t, i, g, j] = (L_gh)_ji
    # 64-term float32 sums, then float64 across them
    tr = (left * partner).sum(-1).sum(2, dtype=torch.float64)  # [h, t, g]
    s_f = torch.linalg.matrix_norm(scat)  # [h, t]
    size = s_f[:, :, None] * s_f.T[None] * torch.linalg.matrix_norm(o_cross).pow(2)[:, None]
    return (tr + 1e-4 * size).clamp_min(0.0).sqrt().permute(1, 0, 2)


def _gram_centre(f, p: Tensor, v: Tensor) -> dict:
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


def _value_key_gram(f, c: dict, pu, beta, a_ts, e_ts) -> Tensor:
    """[t, s] >= ||sum_h (value_h + key_h)||^2 on the tube, heads combined per source.

    Components X_h = p'_h W_o,h A_v,h (value) and Y_h = beta_h w'_h u_h^T (key, w_h =
    W_o,h (v_s - vbar_t), ||u_h|| = 1 after beta): ||sum X + sum Y||^2 = ||sum_ij Z_i^T Z_j||
    <= sum_ij ||Z_i^T Z_j||, with ||X_h^T X_g|| <= p'_h p'_g N_hg, ||X_h^T Y_g|| <= p'_h beta_g
    ||B_h^T w'_g|| and ||Y_h^T Y_g|| <= beta_h beta_g |w'_h . w'_g|. Tube: ||w'_h - w_h|| <= e_h.
    """
    total = torch.einsum("hts,hg,gts->ts", pu, f.ov_gram, pu)
    for h, (dot, cross) in enumerate(zip(c["gram_dot"], c["gram_cross"], strict=True)):
        dot = dot + e_ts[h][None] * a_ts + a_ts[h][None] * e_ts + e_ts[h][None] * e_ts
        cross = cross + f.c_ov[h] * e_ts
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


def _query_centre(f, cen: dict, vt: Tensor, rot: Tensor) -> Tensor:
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


def _query_moves(
    f, q_side, pu, moved_p, delta, a_ts, a_up, dk, centred: tuple, split: tuple
) -> tuple[Tensor, Tensor, Tensor]:
    """([H, T] each): how far ||W_o,h Cov_t R_t A_q,h|| can move on the tube, a direct bound of
    its tube value (per source, no centre term), and the reweighting part of the move; centred:
    (coefficients, drift term) with sum_s coef_s ||X_s|| + drift >= the reweighting's norm;
    split: (own [H, t, s], mean [H, t]) >= the value moves' own parts ||W_o (v'_s - v_s)|| and
    the norm of the mean's part sum_s p'_s W_o (vbar'_t - vbar_t) b_s^T.

    Cov'_t = sum_s p'_ts (v'_s - vbar'_t)(k'_s - kbar_t)^T for the CENTRE mean kbar_t (the
    weights (v' - vbar') sum to zero under p'), so every source contributes a rank-one term
    whose A_q side is ||A_q^T R_t^T (k_s - kbar_t)|| (+ ||A_q|| ||k'_s - k_s||).
    """
    aq = a_ts * q_side
    reweight = torch.minimum(delta.clamp_max(2.0) * aq.amax(-1), (moved_p * aq).sum(-1))
    reweight = torch.minimum(reweight, (centred[0] * aq).sum(-1) + centred[1])
    e_ts = a_up - a_ts
    k_move = f.c_q[:, None, None] * dk[:, None, :]
    values = torch.minimum(
        (pu * e_ts * q_side).sum(-1), (pu * split[0] * q_side).sum(-1) + split[1]
    )
    moved = reweight + values + (pu * a_up * k_move).sum(-1)
    direct = (pu * a_up * (q_side + k_move)).sum(-1)
    return moved, direct, reweight


def _centred_query_dir(f, k: Tensor, kbar: Tensor, rot: Tensor) -> Tensor:
    """[H, t, s] >= ||A_q,h^T R_t^T (k_s - kbar_t)||."""
    out = []
    for h in range(k.shape[0]):
        diff = k[h][None, :, :] - kbar[h][:, None, :]  # [t, s, hd]
        turned = torch.einsum("tba,tsb->tsa", rot, diff)
        out.append((turned @ f.q_metric[h].T).norm(dim=-1) + f.q_slack[h] * diff.norm(dim=-1))
    return torch.stack(out) * (1 + REL_MARGIN)
