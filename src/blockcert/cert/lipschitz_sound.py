"""Sound Lipschitz and saturation constants of a pre-norm block (exact arithmetic of the IR).

Block (blockcert.surrogate.view): u = norm1(x); y = x + A(u); out = y + M(norm2(y)).
Distance d(X, Y) = max_t ||X_t - Y_t||_2; tube T_r = {X' : d(X', X) <= r} around each evaluated
teacher input X (convex). For X' in T_r the mean value theorem along the segment X -> X' gives
d(g(X'), g(X)) <= sup_{Z in T_r} ||J_g(Z)||_{inf,2} d(X', X), where the operator norm in d is
max_t max_(||u||=1) sum_s ||(dg_t/dx_s)^T u||, at most the row sum max_t sum_s
||dg_t/dx_s||_2 (the block-row-sum bound of nfp; the per-source
attention Jacobian follows Kim et al. 2021, "The Lipschitz constant of self-attention", and the
interval/linear-relaxation view of Shi et al. 2020, "Robustness verification for transformers").
Each line below is an upper bound that holds at every Z in the tube.

Norms. RMS: n(x) = gamma * x / rho, rho = sqrt(||x||^2/d + eps); LayerNorm: the same on the
  centred c = x - mean(x) (a projection, ||c'|| >= ||c|| - r), plus beta. J_n = diag(gamma) P / rho
  with ||P|| <= 1, and ||x'_t|| >= ||x_t|| - r on the tube, so 1/rho <= lambda_t :=
  1/sqrt(max(||x_t|| - r, 0)^2/d + eps) (finite whenever eps > 0). gamma is folded into the next
  weights: A_q = W_q diag(gamma) etc., so ||A_q J_n dx|| <= ||A_q|| lambda_t ||dx||.
Attention, head h reading kv head g, query t, sources s <= t (causal), at a tube point:
  dO_t = W_o,h [sum_s p_ts dv_s + sum_s p_ts dz_ts (v_s - vbar_t)],
  dz_ts = scale (dq_t . k_s + q_t . dk_s), RoPE: q, k rotated (orthogonal) times rope_scaling.
  value path  <= ||W_o,h A_v,g|| sum_s p_ts lambda_s
  query path  <= scale ||W_o,h Cov_t(v, k)|| sigma ||A_q,h|| lambda_t, Cov_t the p-weighted
                 covariance sum_s p_ts (v_s - vbar_t)(k_s - kbar_t)^T
  key path    <= scale ||q_t|| sigma ||A_k,g|| sum_s p_ts ||W_o,h (v_s - vbar_t)|| lambda_s
  The centre values p, q, k, v are the actual ones; over the tube:
  |dq_t| <= sigma ||A_q|| lambda_t r, |dk_s| likewise,
  |z'_ts - z_ts| <= Delta_ts (sound_attention has the per-source form), hence
  p' in [p e^(-Delta_ts - Omega_t), p e^(Delta_ts + Omega_t)] with
  Omega_t = log sum_s p_ts e^(Delta_ts) <= Delta_t = max_s Delta_ts (Jensen), and (Popoviciu: the
  mean absolute deviation of dz is at most half its range) ||p' - p||_1 <= min(2, Delta_t); every
  centre factor is inflated by these.
  Heads add (triangle inequality). GQA via kv_head_of_q; low-rank projections via W = up @ down.
  Tighter passes on the rows that can decide the max: aligned (sound_attention) and joint
  (sound_attention_joint: every path, head and source of a row at once by a weighted
  Cauchy-Schwarz bound, within a few percent of the exact row norm at the centre).
MLP (per token): J = W_down (diag(silu'(g) u) A_gate + diag(silu(g)) A_up) J_n (gated) or
  W_down diag(gelu'(f)) A_fc J_n; the centre Jacobian bounded per token by its Frobenius norm
  (screen) or its spectral norm (refined: a Cholesky-certified upper bound, blockcert.cert.
  spectral, on the tokens that can decide the max, largest first, up to a cap per prompt; the
  screen is ~5x the spectral norm, so uncapped that is nearly every token); the tube
  adds intervals: |g' - g| <= ||A_gate,i|| lambda2_t r_y, |silu''| <= 1/2, |silu'| <= 1.0999, and
  the perturbation W_down diag(e) A is bounded by sqrt(eta^T |H| eta), H = W_d^T W_d (.) A A^T,
  and (product form, _mlp_product_pert) by ||diag(colnorms W_d) e|| ||A|| with e linear in A dw,
  so the input move enters as ||diag(c) A dw|| <= ||diag(c) A|| rho rather than neuron by neuron,
  and (gated MLPs, on the tokens whose centre is refined) through the bilinear form of
  J_M(w') - J_M(w) in (dw, x) at the centre's own slopes (blockcert.cert.sound_mlp_bilinear).
Combination per token (Latt_t bounds the row's operator norm, sound_attention): ||dy_t|| <=
  (1 + Latt_t) delta, r_y,t = r + min(Latt_t r, move_t) with move_t
  a direct bound on how far attn_out_t moves on the tube,
  ||dout_t|| <= (1 + Lmlp_t) ||dy_t||, so L = max_t (1 + Latt_t)(1 + Lmlp_t).
Saturation (on the tube, what the composition theorem's hypothesis asks): the attention output
  moves by at most min(Latt_t r, move_t) (move_t: value change plus reweighting, sound_attention)
  and by at most ||W_o,h A_v,g|| sqrt(d) + ||W_o,h (o_t - c_v)|| for ANY input (normalised inputs
  have ||c/rho|| <= sqrt(d); o' is a convex combination of values); each MLP pre-activation lies
  in pre_i +- ||A_i|| min(lambda2 r_y, 2 sqrt(d)), intersected with its range over the whole ball
  (intervals through silu/gelu); hence ||g(y)_t - g(x)_t|| <= ||y_t - x_t|| + a with
  a = max_t (attention move + MLP move).
Spectral norms are upper bounds only (Schatten-2p, Frobenius; blockcert.cert.spectral). Values
are computed in float64 with explicit margins for the float64 rounding of the bound itself; the
bound is about exact arithmetic of the IR (fp32 evaluation error: blockcert.cert.fp_allowance).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

import torch

from blockcert.cert import sound_mlp_bilinear as bilinear
from blockcert.cert.activations import (
    GELU_ARGMIN,
    GELU_CURVATURE,
    GELU_MIN,
    GELU_SLOPE,
    SILU_ARGMIN,
    SILU_CURVATURE,
    SILU_MIN,
    SILU_SLOPE,
    SILU_SLOPE_MIN,
    activation_range,
    silu_curvature_range,
    silu_slope_range,
)
from blockcert.cert.sound_attention import attention_rows
from blockcert.cert.spectral import (
    perron_root_upper,
    spectral_norm_certified_batched,
    spectral_norm_upper,
    spectral_norm_upper_batched,
)
from blockcert.surrogate.ir import Surrogate
from blockcert.surrogate.view import BlockView, Norm, block_view

Tensor = torch.Tensor

ROPE_SLACK = 1.0 + 1e-6  # cos^2 + sin^2 of fp32 RoPE tables is 1 within 1e-6
REL_MARGIN = 1e-9  # float64 rounding of the bound's own arithmetic (relative)
REFINE_BATCH = 16
ALIGNED_TOKENS = 64  # per prompt: tokens whose attention rows get the aligned bounds


@dataclass
class _Range:
    """What the saturation constant a and the centre MLP Jacobian need: the cheap part of the
    folded weights (no d x d or m x m products beyond W_d^T W_d)."""

    view: BlockView
    d: int
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
    down_norm: float


@dataclass
class _Folded(_Range):
    """Weights of one block in float64 with gamma folded in, and their norms."""

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
    paired_slope: float  # _paired_slope: the tube move of J_M's slope terms per unit rho
    cache: dict = field(default_factory=dict, repr=False)  # products computed on first use


def _spectral_upper(matrix: Tensor) -> float:
    return float(spectral_norm_certified_batched(matrix[None])[0])


def _column_weighted_norm(w_down: Tensor, rows: Tensor) -> float:
    """>= ||W_d diag(sqrt(rows))||: the Gershgorin part of the Khatri-Rao bounds."""
    return _spectral_upper(w_down * rows.sqrt()[None, :])


def _paired_slope(
    w_down: Tensor, mlp_in: list[Tensor], grams: list[list[Tensor]], down_norm: float
) -> float:
    """P >= ||W_d [diag(s_a) (A_u dw o A_g x) + diag(s_b) (A_g dw o A_u x)]|| for unit x and
    ||dw|| <= 1 and ANY slopes s in silu's slope range [SILU_SLOPE_MIN, SILU_SLOPE] (gated;
    GELU: ||W_d diag(s) (A dw o A x)||, |s| <= GELU_CURVATURE): the parts of J_M(w') - J_M(w)
    that the slopes carry.

    A dw o B x = (A kr B)(dw (x) x), rows a_i (x) b_i (Khatri-Rao), ||dw (x) x|| <= 1, so the
    term is at most ||W~ diag(s~) M||, M the stacked Khatri-Rao rows, W~ = [W_d, W_d]. Split
    s = c + e around the range's midpoint c (|e| <= h, its half-width): ||W~ M|| exactly
    (lambda_max of W_d (sum of K's blocks) W_d^T, K = M M^T) times |c|, plus the uncertain part:
    y^T diag(e) K diag(e) y <= h^2 sum_ij |K_ij| |y_i y_j| <= h^2 sum_i y_i^2 sum_j |K_ij|
    (AM-GM), so ||W~ diag(e) M||^2 <= h^2 lambda_max(W_d diag(D) W_d^T) with D the row sums of
    |K| (summed over the blocks that meet W_d's columns). K's blocks: (A_u A_u^T) o (A_g A_g^T)
    on the diagonal, (A_u A_g^T) o (A_g A_u^T) across (GELU: (A A^T) o (A A^T)). The products'
    float64 rounding is below 1e-12 ||a_i|| ||b_i|| ||a_j|| ||b_j|| per entry, added to D and,
    through ||W_d||^2 ||E||_F, to the exact part (with the triple product's own rounding).
    Per-block: no cost per token.
    """
    norms = [a.norm(dim=1) for a in mlp_in]
    if len(mlp_in) == 1:
        (gram,) = grams[0]
        kron = gram * gram
        size = norms[0] * norms[0]
        low, high = -GELU_CURVATURE, GELU_CURVATURE
        rows, total, terms = kron.abs().sum(1), kron, 1
    else:
        (gg, gu), (ug, uu) = grams
        size = norms[0] * norms[1]
        low, high = SILU_SLOPE_MIN, SILU_SLOPE
        diag = uu * gg
        cross = ug * gu  # (A_u A_g^T)_ij (A_g A_u^T)_ij
        # both stacked blocks meet column i
        rows = 2 * diag.abs().sum(1) + cross.abs().sum(1) + cross.abs().sum(0)
        total, terms = 2 * diag + cross + cross.T, 4
    rounding = 1e-12 * terms * size[:, None] * size[None, :]
    rows = rows + rounding.sum(1)
    mid, half = (high + low) / 2, (high - low) / 2
    uncertain = half * _column_weighted_norm(w_down, rows)
    if mid == 0.0:
        return uncertain * (1 + REL_MARGIN)
    # ||W_d T W_d^T|| for the PSD T = total, plus T's rounding (through ||W_d||^2 ||E||_F) and
    # the triple product's: gamma ||abs(W_d)||^2 ||abs(T)||, ||abs(T)|| <= max row sum <= max D
    m, d = total.shape[0], w_down.shape[0]
    product = 2 * (2 * m + d) * 2.0**-53 * _spectral_upper(w_down.abs()) ** 2 * float(rows.max())
    exact = _spectral_upper(w_down @ total @ w_down.T) + product
    exact += down_norm**2 * float(rounding.norm()) * (1 + 1e-9)
    return (abs(mid) * exact**0.5 + uncertain) * (1 + REL_MARGIN)


def _fold(norm: Norm, proj_matrix: Tensor) -> Tensor:
    return proj_matrix * norm.weight.double()[None, :]


def _const(norm: Norm, matrix: Tensor, bias: Tensor | None) -> Tensor:
    out = torch.zeros(matrix.shape[0], dtype=torch.float64)
    if norm.bias is not None:
        out = out + matrix @ norm.bias.double()
    if bias is not None:
        out = out + bias.double()
    return out


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
    av = _fold(view.attn_norm, a.v.matrix())
    return [_metric(av[g * hd : (g + 1) * hd].T) for g in a.kv_head_of_q]


def _range_folded(view: BlockView) -> _Range:
    a, n1, n2 = view.attention, view.attn_norm, view.mlp_norm
    hd = a.head_dim
    wv, wo = a.v.matrix(), a.o.matrix()
    av = _fold(n1, wv)
    v_const_kv = _const(n1, wv, a.v.bias).view(-1, hd)
    heads = range(len(a.kv_head_of_q))
    o_metrics = [_metric(wo[:, h * hd : (h + 1) * hd]) for h in heads]
    o_heads = torch.stack([wo[:, h * hd : (h + 1) * hd] for h in heads])
    o_cross = torch.einsum("hdi,gdj->hgij", o_heads, o_heads)
    v_proj = [av[g * hd : (g + 1) * hd] for g in a.kv_head_of_q]
    ov_gram = _cross_norms(_value_metrics(view), o_cross, v_proj)
    mlp = view.mlp
    w_down = mlp.down.matrix()
    return _Range(
        view=view,
        d=view.d_model,
        c_ov=ov_gram.diagonal().sqrt() * (1 + REL_MARGIN),  # ||B_h|| = sqrt(||B_h^T B_h||)
        ov_gram=ov_gram,
        o_cross=o_cross,
        o_metric=torch.stack([m for m, _ in o_metrics]),
        o_slack=torch.tensor([s for _, s in o_metrics], dtype=torch.float64),
        v_const=torch.stack([v_const_kv[g] for g in a.kv_head_of_q]),
        mlp_in=[_fold(n2, p.matrix()) for p in mlp.inputs],
        mlp_const=[_const(n2, p.matrix(), p.bias) for p in mlp.inputs],
        w_down=w_down,
        down_gram_abs=(w_down.T @ w_down).abs(),
        down_norm=spectral_norm_upper(w_down),
    )


def _folded(view: BlockView) -> _Folded:
    base = _range_folded(view)
    a, n1 = view.attention, view.attn_norm
    hd = a.head_dim
    aq, ak = _fold(n1, a.q.matrix()), _fold(n1, a.k.matrix())
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
    return _Folded(
        **{item.name: getattr(base, item.name) for item in fields(_Range)},
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
        paired_slope=_paired_slope(w_down, mlp_in, grams, base.down_norm),
    )


# ---------------------------------------------------------------- float64 forward at the centre


def _normalise(norm: Norm, x: Tensor) -> tuple[Tensor, Tensor]:
    """(c / rho, ||c||) with c = x (RMS) or x - mean (LayerNorm); the output is gamma * . + beta."""
    c = x - x.mean(-1, keepdim=True) if norm.kind == "layer" else x
    rho = torch.sqrt(c.pow(2).mean(-1, keepdim=True) + norm.eps)
    return c / rho, c.norm(dim=-1)


def _apply_norm(norm: Norm, xhat: Tensor) -> Tensor:
    out = norm.weight.double() * xhat
    return out + norm.bias.double() if norm.bias is not None else out


def _linear(p, x: Tensor) -> Tensor:
    out = x @ p.matrix().T
    return out + p.bias.double() if p.bias is not None else out


def _rope(x: Tensor, inv_freq: Tensor, scaling: float) -> Tensor:
    """HF rotate_half RoPE in float64; x: [..., heads, T, hd]."""
    pos = torch.arange(x.shape[-2], dtype=torch.float64)
    freqs = pos[:, None] * inv_freq.double()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * emb.cos() + rotated * emb.sin()) * scaling


def forward64(view: BlockView, x: Tensor) -> dict[str, Tensor]:
    """The block in float64 on one prompt x: [T, d]; returns the centre values the bounds use."""
    a, T = view.attention, x.shape[0]
    x = x.double()
    xhat, xnorm = _normalise(view.attn_norm, x)
    u = _apply_norm(view.attn_norm, xhat)
    hd = a.head_dim
    q = _linear(a.q, u).view(T, -1, hd).transpose(0, 1)  # [H, T, hd]
    k = _linear(a.k, u).view(T, -1, hd).transpose(0, 1)
    v = _linear(a.v, u).view(T, -1, hd).transpose(0, 1)
    if a.inv_freq is not None:
        q, k = _rope(q, a.inv_freq, a.rope_scaling), _rope(k, a.inv_freq, a.rope_scaling)
    index = torch.tensor(a.kv_head_of_q)
    k, v = k.index_select(0, index), v.index_select(0, index)
    logits = a.scale * q @ k.transpose(-1, -2)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    p = torch.softmax(logits.masked_fill(~causal, -math.inf), dim=-1)
    o = p @ v  # [H, T, hd]
    attn_out = _linear(a.o, o.transpose(0, 1).reshape(T, -1))
    y = x + attn_out
    what, ynorm = _normalise(view.mlp_norm, y)
    w = _apply_norm(view.mlp_norm, what)
    pre = [_linear(proj, w) for proj in view.mlp.inputs]
    if view.mlp.kind == "gated_silu":
        hidden = torch.nn.functional.silu(pre[0]) * pre[1]
    else:
        hidden = torch.nn.functional.gelu(pre[0], approximate="tanh")
    out = y + _linear(view.mlp.down, hidden)
    return {
        "xnorm": xnorm, "q": q, "k": k, "v": v, "p": p, "o": o, "y": y, "ynorm": ynorm,
        "pre": pre, "hidden": hidden, "out": out,
    }  # fmt: skip


# ---------------------------------------------------------------- per-token bounds


def _lam(norm_c: Tensor, radius: Tensor | float, d: int, eps: float) -> Tensor:
    """lambda = 1 / sqrt(max(||c|| - r, 0)^2 / d + eps) >= 1/rho on the tube (inf if eps = 0)."""
    low = (norm_c - radius).clamp_min(0.0)
    return (low.pow(2) / d + eps).rsqrt() * (1 + REL_MARGIN)


def _attention_rows(
    f: _Folded,
    cen: dict,
    r: float,
    aligned: Tensor | None = None,
    first: tuple[Tensor, Tensor] | None = None,
    joint: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """(Latt_t, move_t, r_y,t) [T]: the attention Jacobian's row norm bounded over the tube of
    radius r, how far attn_out_t moves on it, and the radius of the tube the MLP reads:
    ||y'_t - y_t|| <= r + min(Latt_t r, move_t). aligned: only these rows, with the costlier
    bounds ([len(aligned)] outputs), put into a copy of `first` ([T] each, the same rows of an
    earlier pass) when given, as the smaller of the two; joint: those rows get the joint bound
    (sound_attention_joint) instead of the aligned key and query bounds."""
    eps = f.view.attn_norm.eps
    lam = _lam(cen["xnorm"], r, f.d, eps)
    lam_centre = _lam(cen["xnorm"], 0.0, f.d, eps) if joint else None
    latt, move = attention_rows(f, cen, lam, r, aligned, lam_centre)
    move = torch.minimum(latt * r, move)
    if first is not None:  # both passes bound the same rows: keep the smaller
        full_latt, full_move = first[0].clone(), first[1].clone()
        full_latt[aligned] = torch.minimum(full_latt[aligned], latt)
        full_move[aligned] = torch.minimum(full_move[aligned], move)
        latt, move = full_latt, full_move
    return latt, move, r + move


def _mlp_state(f: _Folded, cen: dict, r_y: Tensor):
    """Centre Jacobian coefficients z [T, k m], their tube radius eta [T, k m], lambda2 [T]."""
    lam2 = _lam(cen["ynorm"], r_y, f.d, f.view.mlp_norm.eps)
    rho_w = lam2 * r_y  # ||w_hat' - w_hat||
    rows = [ai.norm(dim=1) for ai in f.mlp_in]
    spread = [rho_w[:, None] * ri[None, :] for ri in rows]  # |pre' - pre| per neuron
    if f.view.mlp.kind == "gated_silu":
        g, u = cen["pre"]
        sg = torch.sigmoid(g)
        silu_d = sg * (1 + g * (1 - sg))
        z = torch.cat([silu_d * u, torch.nn.functional.silu(g)], dim=1)
        d_slope = torch.clamp(SILU_CURVATURE * spread[0], max=2 * SILU_SLOPE)
        eta_a = d_slope * u.abs() + SILU_SLOPE * spread[1]
        eta_b = SILU_SLOPE * spread[0]
        eta = torch.cat([eta_a, eta_b], dim=1)
    else:
        (fc,) = cen["pre"]
        c = 0.7978845608028654 * (fc + 0.044715 * fc**3)
        t = torch.tanh(c)
        dc = 0.7978845608028654 * (1 + 3 * 0.044715 * fc**2)
        z = 0.5 * (1 + t) + 0.5 * fc * (1 - t * t) * dc
        eta = torch.clamp(GELU_CURVATURE * spread[0], max=2 * GELU_SLOPE)
    return z, eta, lam2


def _quad(mat: Tensor, z: Tensor) -> Tensor:
    return ((z @ mat) * z).sum(-1).clamp_min(0.0)


def _weighted_gate_norms(f: _Folded, up: Tensor, iterations: int = 8) -> Tensor:
    """[T] >= ||diag(down_cols |up_t|) A_gate|| per token (_weighted_norms)."""
    return _weighted_norms(f.gate_gram_abs, f.down_cols[None, :] * up.abs(), iterations)


def _weighted_norms(gram_abs: Tensor, scale: Tensor, iterations: int = 8) -> Tensor:
    """[T] >= ||diag(scale_t) A|| per row scale_t >= 0 of `scale` [T, m]; gram_abs = |A A^T|.

    With D = diag(s), ||D A||^2 = lambda_max(D A A^T D) <= rho(D |A A^T| D) = rho(|A A^T| D^2),
    and for the non-negative matrix B = |A A^T| D^2 and ANY positive y, rho(B) <= max_i
    (B y)_i / y_i (Collatz-Wielandt); a few power steps make y near the Perron vector.
    """
    s2 = scale.pow(2)
    root = perron_root_upper(lambda y: (s2 * y) @ gram_abs, torch.ones_like(s2), iterations)
    return (root * (1 + 1e-9)).sqrt()


def _paired_curvature(f: _Folded, up: Tensor) -> float:
    """C >= ||W_d diag(s) (u o (A_g dw) o (A_g x))|| for unit x, ||dw|| <= 1, |s| <= SILU_CURVATURE
    and |u| <= max_t |up_t| (up [T, m], elementwise over the prompt's tokens): the curvature
    term of J_M(w') - J_M(w), through the Khatri-Rao rows u_i (a_i (x) a_i) as in _paired_slope
    (Gershgorin on their Gram |u_i| |K_ij| |u_j|, K = (A_g A_g^T) o (A_g A_g^T)). One spectral
    norm per prompt."""
    top = up.abs().amax(0)
    size = f.mlp_in[0].norm(dim=1).pow(2) * top
    rows = top * (f.gate_gram_abs.pow(2) @ top) + 1e-12 * size * size.sum()  # + Gram rounding
    return SILU_CURVATURE * _column_weighted_norm(f.w_down, rows) * (1 + REL_MARGIN)


def _mlp_product_pert(f: _Folded, cen: dict, rho: Tensor) -> Tensor:
    """[T] >= ||J_M(w') - J_M(w)|| for ||w' - w|| <= rho_t (normalised MLP inputs), before lambda2.

    J_M(w') - J_M(w) = W_d (diag(e_a) A_gate + diag(e_b) A_up) with, per neuron,
    e_a = silu'(g') (u' - u) + u (silu'(g') - silu'(g)), e_b = silu(g') - silu(g), so
    |e_a| <= S_i |A_up,i dw| + K_i |up_i| |A_gate,i dw| and |e_b| <= S_i |A_gate,i dw|, where
    S_i, K_i bound |silu'|, |silu''| (GELU: |e| <= GELU_CURVATURE |A_i dw|), and
    ||W_d diag(e) A|| <= ||W_d diag(e)||_F ||A|| = ||diag(down_cols) e|| ||A||: the input
    perturbation enters through ||diag(c) A dw|| <= ||diag(c) A|| rho, not neuron by neuron.
    S_i, K_i are the global SILU_SLOPE, SILU_CURVATURE, or their maxima over the neuron's own
    interval g_i +- ||A_gate,i|| rho_t (_local_slopes: a neuron far from 0, such as a large gate
    row's, has almost no curvature there); the global SILU_SLOPE terms (GELU: all of it) are
    also bounded together, through the Khatri-Rao rows of both factors (_paired_slope), and the
    curvature term per prompt the same way (_paired_curvature); the smaller bounds are taken.
    """
    norms, weighted = f.mlp_in_norms, f.weighted_in_norms
    if f.gate_gram_abs is None:
        per_rho = torch.full_like(rho, min(GELU_CURVATURE * norms[0] * weighted[0], f.paired_slope))
    else:
        curved = cen.get("curvature_per_rho")
        if curved is None:
            curved = norms[0] * SILU_CURVATURE * _weighted_gate_norms(f, cen["pre"][1])
            curved = cen["curvature_per_rho"] = curved.clamp_max(
                _paired_curvature(f, cen["pre"][1])
            )
        slopes = SILU_SLOPE * (norms[0] * weighted[1] + norms[1] * weighted[0])
        local_curved, local_slopes = _local_slopes(f, cen, rho)
        per_rho = torch.minimum(curved, local_curved) + local_slopes.clamp_max(
            min(slopes, f.paired_slope)
        )
    return per_rho * rho * (1 + REL_MARGIN)


def _local_slopes(f: _Folded, cen: dict, rho: Tensor) -> tuple[Tensor, Tensor]:
    """([T], [T]) per unit rho: the curvature term ||A_gate|| ||diag(c K |up|) A_gate|| and the
    slope terms ||A_gate|| ||diag(c S) A_up|| + ||A_up|| ||diag(c S) A_gate|| of
    _mlp_product_pert with each neuron's S_i >= |silu'|, K_i >= |silu''| over its own interval
    g_i +- ||A_gate,i|| rho_t (c: the column norms of W_d)."""
    g, up = cen["pre"]
    spread = rho[:, None] * f.mlp_in[0].norm(dim=1)[None, :] * (1 + REL_MARGIN)
    lo, hi = g - spread, g + spread
    c = f.down_cols[None, :]
    norms = f.mlp_in_norms
    curved = norms[0] * _weighted_norms(
        f.gate_gram_abs, c * silu_curvature_range(lo, hi) * up.abs()
    )
    slope = c * silu_slope_range(lo, hi)
    slopes = norms[0] * _weighted_norms(f.up_gram_abs, slope) + norms[1] * _weighted_norms(
        f.gate_gram_abs, slope
    )
    return curved * (1 + REL_MARGIN), slopes * (1 + REL_MARGIN)


def _mlp_rows_screen(
    f: _Folded, cen: dict, z: Tensor, eta: Tensor, rho: Tensor
) -> tuple[Tensor, Tensor]:
    """(Frobenius bound of the centre Jacobian, tube perturbation) per token, before lambda2;
    rho [T] bounds how far the normalised MLP input moves."""
    margin = 4e-13 * f.gram_abs_rowsum * (z * z).sum(-1)
    frob = (_quad(f.h_mat, z) + margin).sqrt()
    pert = (_quad(f.h_abs, eta) * (1 + 1e-12)).sqrt()
    m = f.w_down.shape[1]
    product = sum(  # ||W_d sum_j diag(e_j) A_j|| <= ||W_d|| sum_j max|e_j| ||A_j||
        eta[:, j * m : (j + 1) * m].amax(-1) * norm for j, norm in enumerate(f.mlp_in_norms)
    )
    pert = torch.minimum(pert, f.down_norm * product * (1 + REL_MARGIN))
    pert = torch.minimum(pert, _mlp_product_pert(f, cen, rho))
    return frob * (1 + REL_MARGIN), pert


def _mlp_centre_spectral(f: _Folded, z: Tensor) -> Tensor:
    """Upper bounds on ||W_d (sum_j diag(z_j) A_j)|| for a few tokens z: [n, k m]."""
    m = f.w_down.shape[1]
    mats = z[:, :m, None] * f.mlp_in[0][None]
    for j, a_j in enumerate(f.mlp_in[1:], start=1):
        mats.addcmul_(z[:, j * m : (j + 1) * m, None], a_j[None])
    jac = f.w_down[None] @ mats  # [n, d, d]
    return spectral_norm_certified_batched(jac) * (1 + REL_MARGIN)


def _saturation_rows(f: _Folded, cen: dict, move: Tensor, spread: Tensor) -> Tensor:
    """a_t [T] with ||F(y)_t - F(x)_t|| <= a_t for every y in the tube (F: the residual update).

    move [T]: how far the attention output moves on the tube; spread [T]: how far the MLP's
    normalised input moves (lambda2 r_y). Both are capped by what holds for ANY input: the
    attention output is a convex combination of values, and a normalised vector has norm
    <= sqrt(d), so it moves by at most 2 sqrt(d) and each pre-activation stays in its range over
    the ball of radius sqrt(d).
    """
    root_d = math.sqrt(f.d)
    o_c = cen["o"] - f.v_const[:, None, :]  # [H, T, hd]
    centre = torch.einsum("hij,htj->hti", f.o_metric, o_c).norm(dim=-1)
    centre = centre + f.o_slack[:, None] * o_c.norm(dim=-1)
    attn = torch.minimum((f.c_ov[:, None] * root_d + centre).sum(0), move)  # [T]
    spread = spread.clamp_max(2 * root_d)[:, None]
    lo, hi = [], []
    for c, ai, pre in zip(f.mlp_const, f.mlp_in, cen["pre"], strict=True):
        row = ai.norm(dim=1)
        lo.append(torch.maximum(c - row * root_d, pre - row * spread))
        hi.append(torch.minimum(c + row * root_d, pre + row * spread))
    if f.view.mlp.kind == "gated_silu":
        s_lo, s_hi = activation_range(torch.nn.functional.silu, lo[0], hi[0], SILU_MIN, SILU_ARGMIN)
        prods = torch.stack([s_lo * lo[1], s_lo * hi[1], s_hi * lo[1], s_hi * hi[1]])
        h_lo, h_hi = prods.amin(0), prods.amax(0)
    else:
        gelu = lambda t: torch.nn.functional.gelu(t, approximate="tanh")  # noqa: E731
        h_lo, h_hi = activation_range(gelu, lo[0], hi[0], GELU_MIN, GELU_ARGMIN)
    slack = 1e-9 * torch.maximum(h_lo.abs(), h_hi.abs()) + 1e-12
    h_lo, h_hi = h_lo - slack, h_hi + slack
    hidden = cen["hidden"]
    w = torch.maximum((h_hi - hidden).abs(), (hidden - h_lo).abs())  # [T, m]
    quad = (_quad(f.down_gram_abs, w) * (1 + 1e-12)).sqrt()
    mlp = torch.minimum(quad, f.down_norm * w.norm(dim=-1))
    return (attn + mlp) * (1 + REL_MARGIN)


@dataclass
class SoundBlockBound:
    """lipschitz: max_t of the per-token constant (1 + Latt_t)(1 + Lmlp_t), averaged over the
    tube's shells when shells > 1 (inf when a norm is singular on the tube, which needs
    eps = 0, or when not computed because the chain's step is B + a: saturated_step);
    saturation: a with d(g(y), g(x)) <= d(y, x) + a for every y in the tube."""

    lipschitz: float
    saturation: float
    attention: float | None  # max_t Latt_t on the whole tube (None: not computed)
    mlp: float | None  # max_t Lmlp_t on the whole tube (None: not computed)
    min_input_norm: float
    tokens: int
    prompts: int
    refined: int
    shells: int
    saturated_step: bool = False  # L not computed: the chain's step is B + a (_saturated_step)


@dataclass
class _CentreMlp:
    """Per-token centre bounds of one prompt's MLP Jacobian (inf: not computed): spectral
    >= ||J_M,t||; bilinear >= the centre part of its second-order term (sound_mlp_bilinear,
    gated MLPs), the same on every shell."""

    spectral: Tensor  # [T]
    bilinear: Tensor  # [T]

    @classmethod
    def unknown(cls, tokens: int) -> _CentreMlp:
        blank = torch.full((tokens,), math.inf, dtype=torch.float64)
        return cls(spectral=blank, bilinear=blank.clone())


@dataclass
class _PromptRows:
    """Per-token bounds of one prompt on each shell radius r i/n (rows i = 0..n-1)."""

    latt: Tensor  # [n, T]
    move: Tensor  # [n, T] how far attn_out_t moves on each shell (before the shell integral)
    screen: Tensor  # [n, T] Lmlp before refinement
    pert: Tensor  # [n, T] tube part of Lmlp, before lambda2
    lam2: Tensor  # [n, T]
    rho: Tensor  # [n, T] how far the normalised MLP input moves (lambda2 r_y)
    spread: Tensor  # [n, T] sound_mlp_bilinear.tube_spread where computed (inf elsewhere)
    z: Tensor  # [T, k m] centre Jacobian coefficients
    saturation: Tensor  # [T] on the whole tube
    min_norm: Tensor


def _prompt_rows(
    f: _Folded,
    cen: dict,
    r: float,
    shells: int,
    aligned: Tensor | None = None,
    first: _PromptRows | None = None,
    joint: bool = False,
) -> _PromptRows:
    """Shell i holds the points at distance <= r_i = r i/n from the centre. On the segment from
    the centre to X' the points between distances r_(i-1) and r_i lie in shell i, so with the
    running maximum Lt_i of the shell bounds, ||attn_out(X')_t - attn_out(X)_t|| <=
    (r/n) sum_(j<=i) Lt_att,j (mean value theorem): a direct bound on how far the attention
    output moves, tighter than Latt_i r_i when Latt grows over the tube. aligned: the tokens
    whose attention rows get the costlier aligned bounds (sound_attention.attention_rows; with
    joint, also the joint bound); the other rows keep those of `first` (an earlier pass)."""
    rows = {"latt": [], "move": [], "screen": [], "pert": [], "lam2": [], "rho": []}
    running, integral = None, None
    for i, (radius, width) in enumerate(zip(*_shell_radii(r, shells), strict=True)):
        base = None if first is None else (first.latt[i], first.move[i])
        latt, move, _ = _attention_rows(f, cen, radius, aligned, base, joint)
        rows["move"].append(move)
        running = latt if running is None else torch.maximum(running, latt)
        part = running * width
        integral = part if integral is None else integral + part
        move = torch.minimum(move, integral * (1 + REL_MARGIN))
        r_y = radius + move
        z, eta, lam2 = _mlp_state(f, cen, r_y)
        frob, pert = _mlp_rows_screen(f, cen, z, eta, lam2 * r_y)
        for key, value in (("latt", latt), ("screen", lam2 * (frob + pert)), ("pert", pert)):
            rows[key].append(value)
        rows["lam2"].append(lam2)
        rows["rho"].append(lam2 * r_y)
    saturation = _saturation_rows(f, cen, move, lam2 * r_y)
    stacked = {key: torch.stack(value) for key, value in rows.items()}
    spread = torch.full_like(stacked["pert"], math.inf)
    return _PromptRows(
        **stacked, spread=spread, z=z, saturation=saturation, min_norm=cen["xnorm"].min()
    )


def _two_pass_rows(
    f: _Folded,
    cen: dict,
    r: float,
    shells: int,
    refine: int | None,
    floor: float,
    joint_tokens: int | None = 0,
) -> tuple[_PromptRows, Tensor, Tensor]:
    """(rows, lmlp, spec) of one prompt: the per-source bounds; the spectral MLP bound on the
    tokens that can decide the max (_refine_rows); the aligned attention bounds on the
    ALIGNED_TOKENS tokens with the largest constant after that (the same bounds with extra
    minima, so every row is at most the first pass's; the other rows are not recomputed); then
    the spectral bound again on any token that can now decide the max; then the joint bound on
    joint_tokens rows (_joint_rows)."""
    rows = _prompt_rows(f, cen, r, shells)
    spec = _CentreMlp.unknown(rows.z.shape[0])
    budget = rows.z.shape[0] if refine is None else refine
    # one round only: it orders the tokens for the aligned pass; the later calls settle
    budget -= _refine_rows(f, cen, rows, r, spec, budget, floor)
    score = _prompt_constants(rows, _mlp_rows(rows, spec), r)
    top = torch.argsort(score, descending=True)[:ALIGNED_TOKENS]
    if len(top) and torch.isfinite(score[top]).all():
        rows = _prompt_rows(f, cen, r, shells, top, rows)
        _tube_spread(f, cen, rows, spec, torch.isfinite(spec.bilinear).nonzero()[:, 0])
        budget -= _refine_rows(f, cen, rows, r, spec, budget, floor, settle=True)
        rows = _joint_rows(f, cen, r, shells, rows, spec, budget, floor, joint_tokens)
    return rows, _mlp_rows(rows, spec), spec


def _joint_rows(
    f: _Folded,
    cen: dict,
    r: float,
    shells: int,
    rows: _PromptRows,
    spec: _CentreMlp,
    budget: int,
    floor: float,
    joint_tokens: int | None,
) -> _PromptRows:
    """The joint attention bound (sound_attention_joint; ~30 ms a row on SmolLM2) on the
    joint_tokens rows with the largest constant (None: every row) in one pass, the other rows
    kept; the MLP's spectral bound follows on the rows that can now decide the max."""
    count = rows.z.shape[0] if joint_tokens is None else min(joint_tokens, rows.z.shape[0])
    if count <= 0:
        return rows
    score = _prompt_constants(rows, _mlp_rows(rows, spec), r)
    if not torch.isfinite(score).all():
        return rows
    top = torch.argsort(score, descending=True)[:count]
    rows = _prompt_rows(f, cen, r, shells, top, rows, joint=True)
    _tube_spread(f, cen, rows, spec, torch.isfinite(spec.bilinear).nonzero()[:, 0])
    _refine_rows(f, cen, rows, r, spec, budget, floor, settle=True)
    return rows


def _mlp_rows(rows: _PromptRows, spec: _CentreMlp) -> Tensor:
    """[n, T] Lmlp per shell: the screen, or lambda2 (||J_M(centre)|| + tube part) where the
    centre's spectral bound is known; the tube part is the smaller of rows.pert and the
    bilinear bound rho (centre + spread) where that is known."""
    known = torch.isfinite(spec.bilinear)[None, :] & torch.isfinite(rows.spread)
    centre = spec.bilinear.nan_to_num(posinf=0.0)[None, :]
    second = (centre + rows.spread.nan_to_num(posinf=0.0)) * rows.rho * (1 + REL_MARGIN)
    pert = torch.where(known, torch.minimum(rows.pert, second), rows.pert)
    return torch.minimum(rows.screen, rows.lam2 * (spec.spectral[None, :] + pert))


def _bilinear_products(f: _Folded) -> dict | None:
    """sound_mlp_bilinear's per-block products (gated MLPs; None otherwise), on first use."""
    if f.view.mlp.kind != "gated_silu":
        return None
    if "bilinear" not in f.cache:
        f.cache["bilinear"] = bilinear.bilinear_products(f.w_down, *f.mlp_in)
    return f.cache["bilinear"]


def _tube_spread(f: _Folded, cen: dict, rows: _PromptRows, spec: _CentreMlp, ids: Tensor) -> None:
    """rows.spread on every shell for the tokens ids (those with a bilinear centre bound)."""
    prod = _bilinear_products(f)
    if prod is None or not len(ids):
        return
    g, u = (p[ids][None] for p in cen["pre"])
    rows.spread[:, ids] = bilinear.tube_spread(f.down_gram_abs, prod, g, u, rows.rho[:, ids])


def _refine_bilinear(
    f: _Folded, cen: dict, rows: _PromptRows, r: float, spec: _CentreMlp, floor: float
) -> int:
    """The bilinear centre bound (~0.1 s a token on SmolLM2, 7x the spectral one) by the same
    branch and bound as _refine_rows, among the tokens whose spectral bound is known: in order
    of their constant, until the next is at most the largest constant of any other token.
    Returns how many bilinear bounds were computed."""
    prod = _bilinear_products(f)
    per_token = _prompt_constants(rows, _mlp_rows(rows, spec), r)
    if prod is None or not torch.isfinite(per_token).all():
        return 0
    known = int(torch.isfinite(spec.bilinear).sum())
    open_ = torch.isfinite(spec.spectral) & ~torch.isfinite(spec.bilinear)
    best = max(floor, float(per_token[~open_].max()) if (~open_).any() else 0.0)
    order = torch.argsort(per_token.masked_fill(~open_, -math.inf), descending=True)
    for start in range(0, int(open_.sum()), REFINE_BATCH):
        ids = order[start : start + REFINE_BATCH]
        if float(per_token[ids[0]]) <= best:
            break
        g, u = (p[ids] for p in cen["pre"])
        spec.bilinear[ids] = bilinear.centre_bilinear(f.w_down, prod, g, u)
        _tube_spread(f, cen, rows, spec, ids)
        refined = _prompt_constants(rows, _mlp_rows(rows, spec), r)
        best = max(best, float(refined[ids].max()))
    return int(torch.isfinite(spec.bilinear).sum()) - known


def _refine_rows(
    f: _Folded,
    cen: dict,
    rows: _PromptRows,
    r: float,
    spec: _CentreMlp,
    budget: int,
    floor: float,
    settle: bool = False,
) -> int:
    """Fill spec.spectral (inf: not computed) with spectral bounds of the centre MLP Jacobian by
    branch and bound: unrefined tokens in order of their constant, until `budget` tokens are
    done or the next one's constant is at most the largest refined one or `floor` (a constant
    some token already has): such tokens cannot decide the max; then spec.bilinear the same way
    (_refine_bilinear). settle: repeat both until a round computes nothing: the bilinear bounds
    lower the constants the spectral round stopped at, so a token it skipped can hold the max
    afterwards (SmolLM2 block 12, one prompt at r = 1e-3: 183 at an unrefined token -> 129).
    Returns how many spectral bounds were computed."""
    computed = 0
    while True:
        spectral = _refine_spectral(f, rows, r, spec, budget - computed, floor)
        bilinear_count = _refine_bilinear(f, cen, rows, r, spec, floor)
        computed += spectral
        if not settle or spectral + bilinear_count == 0:
            return computed


def _refine_spectral(
    f: _Folded, rows: _PromptRows, r: float, spec: _CentreMlp, budget: int, floor: float
) -> int:
    """One branch-and-bound round of _refine_rows' spectral bounds; how many were computed."""
    per_token = _prompt_constants(rows, _mlp_rows(rows, spec), r)
    if not torch.isfinite(per_token).all():
        return 0
    done = torch.isfinite(spec.spectral)
    best = max(floor, float(per_token[done].max()) if done.any() else 0.0)
    order = torch.argsort(per_token.masked_fill(done, -math.inf), descending=True)
    order = order[: max(0, min(int((~done).sum()), budget))]
    for start in range(0, len(order), REFINE_BATCH):
        ids = order[start : start + REFINE_BATCH]
        if float(per_token[ids[0]]) <= best:
            break
        spec.spectral[ids] = _mlp_centre_spectral(f, rows.z[ids])  # the same on every shell
        refined = _prompt_constants(rows, _mlp_rows(rows, spec), r)
        best = max(best, float(refined[ids].max()))
    return int(torch.isfinite(spec.spectral).sum() - done.sum())


def _shell_radii(r: float, shells: int) -> tuple[list[float], list[float]]:
    """(outer radius, width) of every shell; the last radius is r itself (r * n / n may round
    below r), and the widths are the differences of the radii actually used."""
    radii = [r * i / shells for i in range(1, shells)] + [r]
    widths = [radii[0]] + [b - a for a, b in zip(radii, radii[1:], strict=False)]
    return radii, widths


def _shell_mean(total: Tensor, r: float) -> Tensor:
    """[n, T] shell bounds -> [T]: the mean over shells of their running maximum, which bounds
    d(g(X')_t, g(X)_t) / d(X', X) for every X' in the tube (mean value theorem along the segment
    from the centre: the bound of shell i holds on the part of it between r_(i-1) and r_i, and
    the mean of a non-decreasing step function over [0, rho] grows with rho); never above the
    bound of the whole tube (the last shell), which holds as well."""
    if len(total) == 1 or r <= 0:
        return total[-1]
    _, widths = _shell_radii(r, len(total))
    weights = torch.tensor(widths, dtype=total.dtype)[:, None] / r
    mean = (torch.cummax(total, dim=0).values * weights).sum(0) * (1 + REL_MARGIN)
    return torch.minimum(mean, total[-1])


def _mlp_centre_lower(f: _Folded, z: Tensor, steps: int = 3) -> Tensor:
    """[T] <= ||J_M,t|| at the centre: ||J v|| for a unit v after a few power steps on J^T J
    (matrix-free, J v = W_d sum_j z_j o (A_j v)); less 1e-9 for float64 rounding."""
    m = f.w_down.shape[1]
    coeffs = [z[:, j * m : (j + 1) * m] for j in range(len(f.mlp_in))]

    def forward(v: Tensor) -> Tensor:
        return sum(c * (v @ a.T) for c, a in zip(coeffs, f.mlp_in, strict=True)) @ f.w_down.T

    def backward(u: Tensor) -> Tensor:
        back = u @ f.w_down
        return sum((c * back) @ a for c, a in zip(coeffs, f.mlp_in, strict=True))

    gen = torch.Generator().manual_seed(0)
    v = torch.randn(z.shape[0], f.d, dtype=torch.float64, generator=gen)
    for _ in range(steps):
        v = backward(forward(v / v.norm(dim=-1, keepdim=True)))
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return forward(v).norm(dim=-1) * (1 - 1e-9)


def _slope_reaches(rng: _Range, z: Tensor, lam2: Tensor, needed: float) -> bool:
    """Whether 1 + lambda2_t ||J_M,t|| >= needed for some token (z [T, k m], lambda2 [T]), by the
    lower bounds of _mlp_centre_lower. Tokens are tried in batches, largest lambda2 ||z|| first,
    and the search stops at the first that reaches `needed` (a lower bound on any subset of the
    tokens is one on the max); False only after every token was tried."""
    order = torch.argsort(lam2 * z.norm(dim=-1), descending=True)
    for start in range(0, len(order), REFINE_BATCH):
        ids = order[start : start + REFINE_BATCH]
        if float((1 + lam2[ids] * _mlp_centre_lower(rng, z[ids])).max()) >= needed:
            return True
    return False


def _saturated_step(
    rng: _Range, prompts: list[Tensor], r: float, shells: int, bound: float
) -> SoundBlockBound | None:
    """The chain's step from B = bound when it is B + a whatever L the passes could give.

    a here is the bound that holds for ANY input (_saturation_rows with nothing known of the
    tube: the attention output moves by at most the range of its values, the MLP's normalised
    input by at most 2 sqrt(d)), so it needs no per-source pass: a forward at the centre per
    prompt. Every pass's L is at least max_t (1 + lambda2_t(r/n) ||J_M,t||) (each shell's
    Lmlp_t is at least lambda2 ||J_M,t||, and lambda2 grows with the MLP's tube, at least the
    smallest shell's radius r/n), so when that is >= 1 + a / B, min(L B, B + a) = B + a for every
    L the passes could produce: the constant L is not computed (lipschitz = inf, saturated_step)
    and the chain's step is B + a. The passes' own a is at most this one and equal to it once
    the tube is wide enough for both caps to bind (B far above the token norms, where this is
    tried). None when the estimate does not settle the step (the caller runs every pass)."""
    done, coeffs, lams = [], [], []
    for x in prompts:
        cen = forward64(rng.view, x)
        anywhere = torch.full_like(cen["xnorm"], math.inf)
        done.append(_saturation_rows(rng, cen, anywhere, anywhere))
        coeffs.append(_mlp_state(rng, cen, torch.zeros_like(cen["ynorm"]))[0])
        lams.append(_lam(cen["ynorm"], r / shells, rng.d, rng.view.mlp_norm.eps))
    saturation = float(torch.cat(done).max())
    if not _slope_reaches(rng, torch.cat(coeffs), torch.cat(lams), 1 + saturation / bound):
        return None
    return SoundBlockBound(
        lipschitz=math.inf,
        saturation=saturation,
        attention=None,
        mlp=None,
        min_input_norm=float(min(x.double().norm(dim=-1).min() for x in prompts)),
        tokens=sum(x.shape[0] for x in prompts),
        prompts=len(prompts),
        refined=0,
        shells=shells,
        saturated_step=True,
    )


def _summarise(
    done: list[tuple[_PromptRows, Tensor]],
    r: float,
    shells: int,
    refined: int,
) -> SoundBlockBound:
    """The block's constants from every prompt's rows and Lmlp [n, T] (the max over tokens)."""
    per_token = torch.cat([_prompt_constants(rows, lmlp, r) for rows, lmlp in done])
    return SoundBlockBound(
        lipschitz=float(per_token.max()),
        saturation=float(torch.cat([rows.saturation for rows, _ in done]).max()),
        attention=float(torch.cat([rows.latt[-1] for rows, _ in done]).max()),
        mlp=float(torch.cat([lmlp[-1] for _, lmlp in done]).max()),
        min_input_norm=float(torch.stack([rows.min_norm for rows, _ in done]).min()),
        tokens=per_token.numel(),
        prompts=len(done),
        refined=refined,
        shells=shells,
    )


def _prompt_constants(rows: _PromptRows, lmlp: Tensor, r: float) -> Tensor:
    """[T] per-token constants: the shell mean of (1 + Latt)(1 + Lmlp)."""
    return _shell_mean((1 + rows.latt) * (1 + lmlp), r)


def sound_block_bound(
    surrogate: Surrogate,
    inputs: Iterable[Tensor],
    radius: float,
    max_refine: int | None = None,
    shells: int = 1,
    saturates_from: float | None = None,
    joint_tokens: int | None = 0,
) -> SoundBlockBound:
    """Sound constants of `surrogate` on the tube of `radius` around `inputs` ([b, T, d] each).

    shells: cut the tube into that many shells (each costs one more evaluation of the per-token
    bounds); 1 is the bound of the whole tube. max_refine: at most that many tokens per prompt
    get the spectral MLP bound (~15 ms each on SmolLM2; None: every token that can decide the
    max); the other tokens keep the Frobenius screen, which holds as well. saturates_from: the
    chain's B_(k-1) when the caller composes min(L B, B + a); where a centre forward alone shows
    that no pass can bring L below 1 + a / B, L is not computed (saturated_step, lipschitz inf)
    and a is the bound for any input (_saturated_step)."""
    if shells < 1:
        raise ValueError(f"shells={shells}: cut the tube into at least 1 shell")
    view = block_view(surrogate)
    r = float(radius)
    prompts = [x for batch in inputs for x in batch.reshape(-1, *batch.shape[-2:])]
    with torch.no_grad():
        # tried only where B is well above the typical token norm: there both caps of a bind,
        # and below it lambda stays small and the estimate rarely settles the step
        if saturates_from is not None:
            typical = max((float(x.norm(dim=-1).median()) for x in prompts), default=math.inf)
            if saturates_from >= 10 * typical:
                quick = _saturated_step(_range_folded(view), prompts, r, shells, saturates_from)
                if quick is not None:
                    return quick
        f = _folded(view)
        # one prompt at a time: its centre values and cached terms are dropped before the next
        done, floor, refined = [], 0.0, 0
        for x in prompts:
            cen = forward64(view, x)
            rows, mlp, spec = _two_pass_rows(f, cen, r, shells, max_refine, floor, joint_tokens)
            done.append((rows, mlp))
            floor = max(floor, float(_prompt_constants(rows, mlp, r).max()))
            refined += int(torch.isfinite(spec.spectral).sum())
        return _summarise(done, r, shells, refined)
