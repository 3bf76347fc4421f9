"""The folded block: one block's weights in float64 with the norms' gamma folded forward.

Every operator's bound reads the same folded weights and their per-block norms: A_q = W_q
diag(gamma_1), A_k, A_v likewise, the MLP's A_j = W_j diag(gamma_2), beta in the constant
parts; spectral norms as certified upper bounds (blockcert.cert.spectral), square metrics M
with ||A^T w|| <= ||M w|| + s ||w|| for the attention's head-space norms, and the products of
the MLP bounds that need no token. FoldedRange is the cheap part (what the saturation constant
and the centre MLP Jacobian need), FoldedBlock all of it.
Derivation: docs/soundness.md#folded-block-and-norm-factors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

from blockcert.cert.lipschitz.margins import REL_MARGIN
from blockcert.cert.lipschitz.mlp_paired import paired_slope
from blockcert.cert.lipschitz.norm import fold_gain, fold_offset
from blockcert.cert.spectral import spectral_norm_upper, spectral_norm_upper_batched
from blockcert.surrogate.view import BlockView

Tensor = torch.Tensor

ROPE_SLACK = 1.0 + 1e-6  # cos^2 + sin^2 of fp32 RoPE tables is 1 within 1e-6


@dataclass(frozen=True, eq=False)
class FoldedRange:
    """What the saturation constant a and the centre MLP Jacobian need: the cheap part of the
    folded weights (no d x d or m x m products beyond W_d^T W_d). H query heads of hd dims,
    d = d_model, m MLP neurons; B_h = W_o,h A_v,g(h) (g(h) the kv head of query head h)."""

    view: BlockView  # the block's typed view (norms, attention, MLP)
    d: int  # d_model
    c_ov: Tensor  # [H] ||W_o,h A_v,g(h)||
    ov_gram: Tensor  # [H, H] ||B_h^T B_g||, B_h = W_o,h A_v,g(h)
    o_cross: Tensor  # [H, H, hd, hd] K_hg = W_o,h^T W_o,g
    o_metric: Tensor  # [H, hd, hd] M_h with ||W_o,h w|| <= ||M_h w|| + o_slack_h ||w||
    o_slack: Tensor  # [H]
    v_const: Tensor  # [H, hd] value of v at a zero normalised input (bias, LN beta)
    mlp_in: list[Tensor]  # [m, d] folded input projections (gate, up) or (fc,)
    mlp_const: list[Tensor]  # [m] their constant parts (bias, LN beta)
    w_down: Tensor  # [d, m]
    down_gram_abs: Tensor  # [m, m] |W_d^T W_d|
    down_norm: float  # >= ||W_d||


@dataclass(frozen=True, eq=False)
class FoldedBlock(FoldedRange):
    """Weights of one block in float64 with gamma folded in, and their norms (k = 2 input
    projections for a gated MLP, 1 otherwise)."""

    sigma: float  # rope_scaling (times ROPE_SLACK) or 1
    c_q: Tensor  # [H] ||A_q,h||
    c_k: Tensor  # [H] ||A_k,g(h)||
    ov_cross: Tensor  # [H, H, hd, hd] Q_hg with ||B_h^T W_o,g y||^2 <= y^T Q_hg y + slack
    ov_cross_slack: Tensor  # [H, H] ||B_h^T W_o,g y|| <= sqrt(y^T Q y) + slack_hg ||y||
    q_metric: Tensor  # [H, hd, hd] M with ||A_q,h^T w|| <= ||M w|| + q_slack_h ||w||
    q_slack: Tensor  # [H]
    k_metric: Tensor  # [H, hd, hd] the same for A_k,g(h)
    k_slack: Tensor  # [H]
    gram_abs_rowsum: float  # max row sum of |H|
    h_mat: Tensor  # [k m, k m] H = W_d^T W_d (.) A A^T blocks
    h_abs: Tensor  # |H|
    mlp_in_norms: list[float]  # ||A_j||
    down_cols: Tensor  # [m] column norms of W_d
    weighted_in_norms: list[float]  # ||diag(down_cols) A_j||
    gate_gram_abs: Tensor | None  # [m, m] |A_gate A_gate^T| (gated MLP)
    up_gram_abs: Tensor | None  # [m, m] |A_up A_up^T| (gated MLP)
    paired_slope: float  # mlp_paired.paired_slope: the tube move of J_M's slope terms per rho
    cache: dict = field(default_factory=dict, repr=False)  # products computed on first use


def _metric(w: Tensor) -> tuple[Tensor, float]:
    """M with M^T M ~ W^T W (eigh), and the slack s with ||W x|| <= ||M x|| + s ||x||."""
    gram = w.T @ w
    evals, evecs = torch.linalg.eigh(gram)
    m = evals.clamp_min(0.0).sqrt()[:, None] * evecs.T
    err = float((m.T @ m - gram).norm()) + 1e-15 * float(gram.norm())
    return m, math.sqrt(err)


def _cross_norms(v_metric: list[tuple[Tensor, float]], o_cross: Tensor, av: list[Tensor]) -> Tensor:
    """N_hg >= ||B_h^T B_g||, B_h = W_o,h A_v,h, so ||sum_h c_h B_h||^2 <= c^T N c for c >= 0.

    B_h^T B_g = A_h^T K_hg A_g with ||A_h^T y|| <= ||M_h y|| + s_h ||y|| (hd x hd metrics), so
    N_hg <= ||M_h K_hg M_g^T|| + s_g ||K_hg|| ||M_h|| + s_h ||K_hg|| ||A_g|| (Frobenius for the
    slack factors): a batch of hd x hd spectral norms instead of d x d ones.
    """
    mats = torch.stack([m for m, _ in v_metric])  # [H, hd, hd]
    slack = torch.tensor([s for _, s in v_metric], dtype=torch.float64)
    core = mats[:, None] @ o_cross @ mats[None].transpose(-1, -2)
    k_f = torch.linalg.matrix_norm(o_cross)
    m_f = torch.linalg.matrix_norm(mats)
    a_f = torch.stack([a.norm() for a in av])
    extra = slack[None, :] * k_f * m_f[:, None] + slack[:, None] * k_f * a_f[None, :]
    out = spectral_norm_upper_batched(core, squarings=6) + extra
    return torch.maximum(out, out.T) * (1 + 1e-12)


def _value_metrics(view: BlockView) -> list[tuple[Tensor, float]]:
    """_metric of A_v,g(h)^T for every query head h."""
    a, hd = view.attention, view.attention.head_dim
    av = fold_gain(view.attn_norm, a.v.matrix())
    return [_metric(av[g * hd : (g + 1) * hd].T) for g in a.kv_head_of_q]


def fold_range(view: BlockView) -> FoldedRange:
    """The cheap part of the folded block (FoldedRange)."""
    a, n1, n2 = view.attention, view.attn_norm, view.mlp_norm
    hd = a.head_dim
    wv, wo = a.v.matrix(), a.o.matrix()
    av = fold_gain(n1, wv)
    v_const_kv = fold_offset(n1, wv, a.v.bias).view(-1, hd)
    heads = range(len(a.kv_head_of_q))
    o_metrics = [_metric(wo[:, h * hd : (h + 1) * hd]) for h in heads]
    o_heads = torch.stack([wo[:, h * hd : (h + 1) * hd] for h in heads])
    o_cross = torch.einsum("hdi,gdj->hgij", o_heads, o_heads)
    v_proj = [av[g * hd : (g + 1) * hd] for g in a.kv_head_of_q]
    ov_gram = _cross_norms(_value_metrics(view), o_cross, v_proj)
    mlp = view.mlp
    w_down = mlp.down.matrix()
    return FoldedRange(
        view=view,
        d=view.d_model,
        c_ov=ov_gram.diagonal().sqrt() * (1 + REL_MARGIN),  # ||B_h|| = sqrt(||B_h^T B_h||)
        ov_gram=ov_gram,
        o_cross=o_cross,
        o_metric=torch.stack([m for m, _ in o_metrics]),
        o_slack=torch.tensor([s for _, s in o_metrics], dtype=torch.float64),
        v_const=torch.stack([v_const_kv[g] for g in a.kv_head_of_q]),
        mlp_in=[fold_gain(n2, p.matrix()) for p in mlp.inputs],
        mlp_const=[fold_offset(n2, p.matrix(), p.bias) for p in mlp.inputs],
        w_down=w_down,
        down_gram_abs=(w_down.T @ w_down).abs(),
        down_norm=spectral_norm_upper(w_down),
    )


def fold_block(view: BlockView) -> FoldedBlock:
    """The whole folded block (FoldedBlock): fold_range plus the attention's query and key
    norms and metrics and the MLP's Gram products."""
    base = fold_range(view)
    a, n1 = view.attention, view.attn_norm
    hd = a.head_dim
    aq, ak = fold_gain(n1, a.q.matrix()), fold_gain(n1, a.k.matrix())
    c_kv = [spectral_norm_upper(ak[g * hd : (g + 1) * hd]) for g in range(a.n_kv_heads)]
    k_metric_kv = [_metric(ak[g * hd : (g + 1) * hd].T) for g in range(a.n_kv_heads)]
    c_q, c_k, q_metric, k_metric = [], [], [], []
    for h, g in enumerate(a.kv_head_of_q):
        rows = slice(h * hd, (h + 1) * hd)
        c_q.append(spectral_norm_upper(aq[rows]))
        c_k.append(c_kv[g])
        q_metric.append(_metric(aq[rows].T))
        k_metric.append(k_metric_kv[g])
    v_metric = _value_metrics(view)
    mk = torch.einsum("hij,hgjk->hgik", torch.stack([m for m, _ in v_metric]), base.o_cross)
    ov_cross = mk.transpose(-1, -2) @ mk
    k_norms = torch.linalg.matrix_norm(base.o_cross)  # Frobenius >= spectral
    ov_slack = torch.tensor([s for _, s in v_metric], dtype=torch.float64)[:, None] * k_norms
    mlp, mlp_in, w_down = view.mlp, base.mlp_in, base.w_down
    g_down = w_down.T @ w_down
    down_cols = w_down.norm(dim=0)
    grams = [[ai @ aj.T for aj in mlp_in] for ai in mlp_in]
    blocks = [[g_down * gram for gram in row] for row in grams]
    h_mat = torch.cat([torch.cat(row, dim=1) for row in blocks], dim=0)
    return FoldedBlock(
        **{item.name: getattr(base, item.name) for item in fields(FoldedRange)},
        sigma=a.rope_scaling * ROPE_SLACK if a.inv_freq is not None else 1.0,
        c_q=torch.tensor(c_q, dtype=torch.float64),
        c_k=torch.tensor(c_k, dtype=torch.float64),
        ov_cross=ov_cross,
        ov_cross_slack=ov_slack,
        q_metric=torch.stack([m for m, _ in q_metric]),
        q_slack=torch.tensor([s for _, s in q_metric], dtype=torch.float64),
        k_metric=torch.stack([m for m, _ in k_metric]),
        k_slack=torch.tensor([s for _, s in k_metric], dtype=torch.float64),
        gram_abs_rowsum=float(h_mat.abs().sum(1).max()),
        h_mat=h_mat,
        h_abs=h_mat.abs(),
        mlp_in_norms=[spectral_norm_upper(ai) for ai in mlp_in],
        down_cols=down_cols * (1 + REL_MARGIN),
        weighted_in_norms=[spectral_norm_upper(down_cols[:, None] * ai) for ai in mlp_in],
        gate_gram_abs=grams[0][0].abs() if mlp.kind == "gated_silu" else None,
        up_gram_abs=grams[1][1].abs() if mlp.kind == "gated_silu" else None,
        paired_slope=paired_slope(w_down, mlp_in, grams, base.down_norm),
    )
