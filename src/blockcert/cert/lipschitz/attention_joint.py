"""Attention Jacobian rows bounded jointly over sources and paths (weighted Cauchy-Schwarz).

For query row t, J_ts = W_o X_s with X_s [H hd, d] the value, key and (s = t) query paths of
all heads stacked. For ANY weights w_s > 0 and every unit u,
  sum_s lambda_s ||J_ts^T u|| <= sqrt(sum_s w_s) sqrt(lambda_max(W_o M_t W_o^T)),
  M_t = sum_s (lambda_s^2 / w_s) X_s X_s^T,
an equality at w_s proportional to lambda_s ||J_ts^T u*|| for the maximising u*. M_t is formed
in head space from per-block products, lambda_max certified by a Cholesky factorisation; on the
tube the bound grows by max_s lambda'_s / lambda_s plus the per-source moves (tube_sources).
Notation of blockcert.cert.lipschitz.attention. Derivation: docs/soundness.md#joint-attention-rows.
"""

from __future__ import annotations

import torch

from blockcert.cert.lipschitz.folded import FoldedBlock
from blockcert.cert.lipschitz.margins import REL_MARGIN
from blockcert.cert.spectral import top_eigenvalue_certified_batched

Tensor = torch.Tensor

CHUNK = 8  # rows whose G_t are certified together
ROUNDING = 1e-8  # float64 rounding of G_t relative to its size bound (sums of < 1e6 products)


def block_products(f: FoldedBlock) -> dict:
    """Per-block head-space products, cached on the folded block. A_v and A_k belong to kv
    heads, so their cross products are kept per kv head pair (GQA: far fewer than H^2)."""
    if "joint" in f.cache:
        return f.cache["joint"]
    a, n1 = f.view.attention, f.view.attn_norm
    hd, kv = a.head_dim, torch.tensor(a.kv_head_of_q)
    gamma = n1.weight.double()[None, :]
    av = (a.v.matrix() * gamma).view(-1, hd, gamma.shape[-1])  # [G, hd, d] per kv head
    ak = (a.k.matrix() * gamma).view(-1, hd, gamma.shape[-1])
    aq = (a.q.matrix() * gamma).view(-1, hd, gamma.shape[-1])  # [H, hd, d]
    vv = torch.einsum("aid,bjd->abij", av, av)
    f.cache["joint"] = {
        "kv": kv,
        "av": av[kv],  # [H, hd, d] per query head
        "ak": ak[kv],
        "aq": aq,
        "vv": vv[kv][:, kv],  # [H, H, hd, hd] A_v,h A_v,g^T
        "vk": torch.einsum("aid,bjd->abij", av, ak)[:, kv],  # [G, H, hd, hd] A_v,a A_k,g^T
        "kk": torch.einsum("aid,bjd->abij", ak, ak)[:, kv],
        "wo": a.o.matrix(),  # [d, H hd]
        "frob": [torch.linalg.matrix_norm(m) for m in (av[kv], ak[kv], aq)],  # [H] each
    }
    return f.cache["joint"]


def source_weights(f: FoldedBlock, c: dict, rows: Tensor, lam: Tensor) -> Tensor:
    """[t, s] weights near lambda_s ||J_ts|| (the triangle bound over heads of the value, key
    and, at s = t, query paths at the centre; any positive weights give a valid bound, and a
    zero weight only drops sources with J_ts = 0). c: the centre terms of the rows
    (attention_centre.query_rows), lam [T] the centre's lambda."""
    scale = abs(f.view.attention.scale) * f.sigma
    per_head = c["p"] * (f.c_ov[:, None, None] + scale * c["a_ts"] * c["key_dir"])
    weights = per_head.sum(0)
    index = torch.arange(len(rows))
    weights[index, rows] = weights[index, rows] + scale * c["query_centre"].sum(0)
    return weights * lam[None, :]


def centre_rows(
    f: FoldedBlock, cen: dict, rot: Tensor, rows: Tensor, weights: Tensor, lam: Tensor
) -> Tensor:
    """[t] >= sqrt(sum_s w_s) sqrt(lambda_max(G_t)) for the query rows t = rows at the centre
    (weights [t, s] with zeros where p = 0 in every head, lam [T] the centre's lambda).
    Cached per row set."""
    key = ("joint_centre", tuple(rows.tolist()))
    if key in cen:
        return cen[key]
    prod = block_products(f)
    a = f.view.attention
    ss = abs(a.scale) * f.sigma
    tops = []
    for start in range(0, len(rows), CHUNK):  # certified a few rows at a time (memory)
        grams, sizes = [], []
        for i in range(start, min(start + CHUNK, len(rows))):
            t = int(rows[i])
            gram, size = _row_gram(prod, cen, rot, t, weights[i, : t + 1], lam[: t + 1], ss)
            grams.append(gram)
            sizes.append(size)
        top = top_eigenvalue_certified_batched(torch.stack(grams))
        tops.append(top + ROUNDING * torch.stack(sizes))
    total = weights.sum(-1)
    cen[key] = (total * torch.cat(tops)).sqrt() * (1 + REL_MARGIN)
    return cen[key]


def _row_gram(prod: dict, cen: dict, rot: Tensor, t: int, w: Tensor, lam: Tensor, ss: float):
    """(G_t [d, d], size) for one query row: G_t = W_o M_t W_o^T and a bound `size` on the
    sum of the magnitudes its float64 evaluation adds up (rounding <= ROUNDING size)."""
    n, hd = prod["av"].shape[0], prod["av"].shape[1]
    p = cen["p"][:, t, : t + 1]  # [H, S]
    v, k = cen["v"][:, : t + 1], cen["k"][:, : t + 1]
    dv = v - (p[:, None, :] @ v)  # [H, S, hd] v_s - vbar_t
    r = torch.einsum("sba,hb->hsa", rot[: t + 1], cen["q"][:, t])  # R_s^T q_ht
    c_s = torch.where(w > 0, lam.pow(2) / w.clamp_min(1e-300), 0.0)  # lambda^2 / w
    cp = c_s * p[:, None, :] * p[None, :, :]  # [H, H, S]
    kv = prod["kv"]
    y = ss * torch.einsum("agij,gsj->agsi", prod["vk"], r)[kv]  # [h, g, s, hd] A_v,h kappa_gs
    kr = torch.einsum("agij,gsj->agsi", prod["kk"], r)[kv]
    kk = ss * ss * torch.einsum("hsi,hgsi->hgs", r, kr)  # kappa_hs . kappa_gs
    # block (h, g) of M: sum_s c_s p_hs p_gs [A_v,h A_v,g^T + (A_v,h kappa_gs) dv_gs^T +
    # dv_hs (A_v,g kappa_hs)^T + (kappa_hs . kappa_gs) dv_hs dv_gs^T] = VV + N_hg + N_gh^T with
    # N_hg = sum_s cp_hgs (A_v,h kappa_gs + kk_hgs dv_hs / 2) dv_gs^T
    left = y + 0.5 * kk[..., None] * dv[:, None]
    half = torch.einsum("hgs,hgsi,gsj->hgij", cp, left, dv)
    m = cp.sum(-1)[..., None, None] * prod["vv"] + half + half.permute(1, 0, 3, 2)
    m = m.permute(0, 2, 1, 3).reshape(n * hd, n * hd)
    # the query path (s = t only) in its own terms: c_t (Q Q^T + X Q^T + Q X^T)
    kappa = ss * torch.einsum("hi,hid->hd", r[:, t], prod["ak"])  # [H, d]
    x_t = p[:, t, None, None] * (prod["av"] + dv[:, t, :, None] * kappa[:, None, :])
    cov = torch.einsum("hs,hsi,hsj->hij", p, dv, k - (p[:, None, :] @ k))
    query = ss * cov @ rot[t] @ prod["aq"]  # [H, hd, d]
    x_t, query = x_t.reshape(n * hd, -1), query.reshape(n * hd, -1)
    mixed = x_t @ query.T
    m = m + c_s[t] * (query @ query.T + mixed + mixed.T)
    gram = prod["wo"] @ m @ prod["wo"].T
    gram = 0.5 * (gram + gram.T)
    # ||X_s||_F per source, for the rounding bound
    av_f, ak_f, aq_f = prod["frob"]
    x_f = (p * (av_f[:, None] + dv.norm(dim=-1) * ss * r.norm(dim=-1) * ak_f[:, None])).sum(0)
    x_f[t] = x_f[t] + ss * (torch.linalg.matrix_norm(cov) * aq_f).sum()
    size = (c_s * x_f.pow(2)).sum() * prod["wo"].norm().pow(2)
    return gram, size


def tube_sources(
    f: FoldedBlock,
    rows: Tensor,
    p,
    moved_p,
    pu,
    a_ts,
    key_up,
    dq,
    query,
    lam,
    r,
    reweighted,
    reweighted_keys,
    mean_reweighting=None,
) -> Tensor:
    """[t] >= max_(||u|| = 1) sum_s lambda'_s ||(J'_ts - J_ts)^T u|| on the tube.

    Value path: sum_h (p'_hs - p_hs) W_o,h A_v,h, at most sqrt(|p' - p|^T N |p' - p|) (the Gram
    bound of the attention rows, N_hg >= ||B_h^T B_g||, B_h = W_o,h A_v,h). Key path per head:
    p' dv' kappa'^T - p dv kappa^T = (p' - p) dv' kappa'^T + p (dv' - dv) kappa'^T +
    p dv (kappa' - kappa)^T (rank one each: ||(w kappa^T)^T u|| = |u . w| ||kappa||), with
    ||kappa'|| <= key_up, ||kappa' - kappa|| <= scale sigma ||A_k|| dq_t, ||W_o dv|| = a_ts, and
    reweighted_keys [t] >= max_u sum_(h, s) |p' - p| key_up lambda_s |u . W_o dv| (aligned over
    (h, s) by attention_aligned). The value moves under the key terms, sum_(h, s) c_hs |u . W_o,h
    (dv'_s - dv_s)| with c = (p + |p' - p|) key_up lambda_s, split as dv' - dv = A_v du_s -
    (vbar' - vbar), vbar' - vbar = sum_s' p'_s' A_v du_s' + sum_s' (p' - p)_s' (v_s' - vbar):
    every head sees the SAME input move du_s (||du_s|| <= lambda_s r), so sum_h c_h |u . B_h du|
    <= ||du|| ||sum_h +-c_h B_h^T u|| <= ||du|| sqrt(c^T N c) for every sign pattern: the heads
    are combined by the Gram bound per source, for the sources' own moves and (weights C_h pu_hs',
    C_h = sum_s c_hs) for the mean's; the mean's reweighting stays per head (reweighted [H, t]).
    Query path (s = t): ||sum_h (Q'_h - Q_h)|| <= scale sigma query (query [t], attention).
    mean_reweighting [t] (optional): >= max_u sum_h C_h |u . W_o,h sum_s (p' - p)_hs (v_s - vbar_t)|
    with C_h = sum_s coef_hs, the mean's reweighting under the key terms aligned over heads.
    All [H, t, s] except dq and reweighted [H, t], lam [T] (the tube's lambda) and rows [t] (the
    query rows' positions)."""
    scale = abs(f.view.attention.scale) * f.sigma
    value = _head_gram(_ov_gram(f), moved_p)
    kappa_move = scale * f.c_k[:, None, None] * dq[:, :, None]
    key_centre = (p * a_ts * kappa_move).sum(0)
    coef = (p + moved_p) * key_up * lam[None, None, :]
    moves = value_moves(f, coef, pu, lam, r, reweighted, mean_reweighting)
    total = ((value + key_centre) * lam[None, :]).sum(-1) + moves
    total = total + scale * query * lam[rows]
    return (total + reweighted_keys) * (1 + REL_MARGIN)


def value_moves(
    f: FoldedBlock,
    coef: Tensor,
    pu: Tensor,
    lam: Tensor,
    r: float,
    reweighted: Tensor,
    mean_reweighting=None,
) -> Tensor:
    """[t] >= sum_(h, s) coef_hts |u . W_o,h (dv'_s - dv_s)| for every unit u (coef [H, t, s]
    >= 0), dv_s = v_s - vbar_t: the sources' own moves and the mean's, heads combined by the Gram
    bound per source (tube_sources), the mean's reweighting per head (reweighted [H, t]) or as
    mean_reweighting [t] (tube_sources) where that is given and smaller."""
    gram = _ov_gram(f)
    own = (_head_gram(gram, coef) * lam[None, :]).sum(-1) * r
    weight = coef.sum(-1)  # [H, t]
    mean_lam = torch.minimum((pu * lam[None, None, :]).sum(-1), lam.max().expand_as(weight))
    shared = torch.minimum(
        (_head_gram(gram, weight[..., None] * pu) * lam[None, :]).sum(-1) * r,
        (weight * f.c_ov[:, None] * mean_lam).sum(0) * r,
    )
    reweighting = (weight * reweighted).sum(0)
    if mean_reweighting is not None:
        reweighting = torch.minimum(reweighting, mean_reweighting)
    return (own + shared + reweighting) * (1 + REL_MARGIN)


def _ov_gram(f: FoldedBlock) -> Tensor:
    """N [H, H] >= ||B_h^T B_g||, capped by ||B_h|| ||B_g||."""
    return torch.minimum(f.ov_gram, f.c_ov[:, None] * f.c_ov[None, :])


def _head_gram(gram: Tensor, coef: Tensor) -> Tensor:
    """[t, s] sqrt(c^T N c) over heads for coef c [H, t, s] >= 0 (N [H, H] >= 0)."""
    quad = torch.einsum("hts,hg,gts->ts", coef, gram, coef).clamp_min(0.0)
    return quad.sqrt() * (1 + REL_MARGIN)
