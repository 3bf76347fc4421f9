"""The MLP sub-layer on the tube: Lmlp_t, per token, of a gated (SiLU) or GELU MLP.

J_M = W_down (diag(silu'(g) o u) A_gate + diag(silu(g)) A_up) (gated) or W_down diag(gelu'(f))
A_fc, times the norm's Jacobian (factor lambda2_t). At the tube centre ||J_M,t|| is bounded by
its Frobenius norm (a screen) or its certified spectral norm (the tokens that can decide the
max); the tube adds how far J_M moves when the normalised input moves by rho_t: per neuron with
intervals, in product form, through Khatri-Rao rows (blockcert.cert.lipschitz.mlp_paired) and
through the bilinear form (blockcert.cert.lipschitz.mlp_bilinear); the smallest is used.
Derivation: docs/soundness.md#gated-mlp.
"""

from __future__ import annotations

import torch

from blockcert.cert.activations import (
    GELU_CURVATURE,
    GELU_SLOPE,
    SILU_CURVATURE,
    SILU_SLOPE,
    silu_curvature_range,
    silu_slope_range,
)
from blockcert.cert.lipschitz.folded import FoldedBlock, FoldedRange
from blockcert.cert.lipschitz.margins import REL_MARGIN
from blockcert.cert.lipschitz.mlp_paired import paired_curvature
from blockcert.cert.lipschitz.norm import norm_factor
from blockcert.cert.spectral import perron_root_upper, spectral_norm_certified_batched

Tensor = torch.Tensor

REFINE_BATCH = 16  # tokens whose centre MLP Jacobian bounds are computed together


def mlp_state(f: FoldedRange, cen: dict, r_y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Centre Jacobian coefficients z [T, k m], their tube radius eta [T, k m], lambda2 [T]
    (r_y [T]: the radius of the tube the MLP reads)."""
    lam2 = norm_factor(cen["ynorm"], r_y, f.d, f.view.mlp_norm.eps)
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


def quad_form(mat: Tensor, z: Tensor) -> Tensor:
    """[T] max(z_t^T mat z_t, 0) for the rows z_t of z [T, n]."""
    return ((z @ mat) * z).sum(-1).clamp_min(0.0)


def weighted_gate_norms(f: FoldedBlock, up: Tensor, iterations: int = 8) -> Tensor:
    """[T] >= ||diag(down_cols |up_t|) A_gate|| per token (weighted_norms)."""
    return weighted_norms(f.gate_gram_abs, f.down_cols[None, :] * up.abs(), iterations)


def weighted_norms(gram_abs: Tensor, scale: Tensor, iterations: int = 8) -> Tensor:
    """[T] >= ||diag(scale_t) A|| per row scale_t >= 0 of `scale` [T, m]; gram_abs = |A A^T|.

    With D = diag(s), ||D A||^2 = lambda_max(D A A^T D) <= rho(D |A A^T| D) = rho(|A A^T| D^2),
    and for the non-negative matrix B = |A A^T| D^2 and ANY positive y, rho(B) <= max_i
    (B y)_i / y_i (Collatz-Wielandt); a few power steps make y near the Perron vector.
    """
    s2 = scale.pow(2)
    root = perron_root_upper(lambda y: (s2 * y) @ gram_abs, torch.ones_like(s2), iterations)
    return (root * (1 + 1e-9)).sqrt()


def mlp_product_pert(f: FoldedBlock, cen: dict, rho: Tensor) -> Tensor:
    """[T] >= ||J_M(w') - J_M(w)|| for ||w' - w|| <= rho_t (normalised MLP inputs), before lambda2.

    J_M(w') - J_M(w) = W_d (diag(e_a) A_gate + diag(e_b) A_up) with, per neuron,
    e_a = silu'(g') (u' - u) + u (silu'(g') - silu'(g)), e_b = silu(g') - silu(g), so
    |e_a| <= S_i |A_up,i dw| + K_i |up_i| |A_gate,i dw| and |e_b| <= S_i |A_gate,i dw|, where
    S_i, K_i bound |silu'|, |silu''| (GELU: |e| <= GELU_CURVATURE |A_i dw|), and
    ||W_d diag(e) A|| <= ||W_d diag(e)||_F ||A|| = ||diag(down_cols) e|| ||A||: the input
    perturbation enters through ||diag(c) A dw|| <= ||diag(c) A|| rho, not neuron by neuron.
    S_i, K_i are the global SILU_SLOPE, SILU_CURVATURE, or their maxima over the neuron's own
    interval g_i +- ||A_gate,i|| rho_t (local_slopes: a neuron far from 0, such as a large gate
    row's, has almost no curvature there); the global SILU_SLOPE terms (GELU: all of it) are
    also bounded together, through the Khatri-Rao rows of both factors (mlp_paired.paired_slope),
    and the curvature term per prompt the same way (mlp_paired.paired_curvature); the smaller
    bounds are taken.
    """
    norms, weighted = f.mlp_in_norms, f.weighted_in_norms
    if f.gate_gram_abs is None:
        per_rho = torch.full_like(rho, min(GELU_CURVATURE * norms[0] * weighted[0], f.paired_slope))
    else:
        curved = cen.get("curvature_per_rho")
        if curved is None:
            up = cen["pre"][1]
            curved = norms[0] * SILU_CURVATURE * weighted_gate_norms(f, up)
            curved = cen["curvature_per_rho"] = curved.clamp_max(
                paired_curvature(f.w_down, f.mlp_in[0], f.gate_gram_abs, up)
            )
        slopes = SILU_SLOPE * (norms[0] * weighted[1] + norms[1] * weighted[0])
        local_curved, local_slope = local_slopes(f, cen, rho)
        per_rho = torch.minimum(curved, local_curved) + local_slope.clamp_max(
            min(slopes, f.paired_slope)
        )
    return per_rho * rho * (1 + REL_MARGIN)


def local_slopes(f: FoldedBlock, cen: dict, rho: Tensor) -> tuple[Tensor, Tensor]:
    """([T], [T]) per unit rho: the curvature term ||A_gate|| ||diag(c K |up|) A_gate|| and the
    slope terms ||A_gate|| ||diag(c S) A_up|| + ||A_up|| ||diag(c S) A_gate|| of
    mlp_product_pert with each neuron's S_i >= |silu'|, K_i >= |silu''| over its own interval
    g_i +- ||A_gate,i|| rho_t (c: the column norms of W_d)."""
    g, up = cen["pre"]
    spread = rho[:, None] * f.mlp_in[0].norm(dim=1)[None, :] * (1 + REL_MARGIN)
    lo, hi = g - spread, g + spread
    c = f.down_cols[None, :]
    norms = f.mlp_in_norms
    curved = norms[0] * weighted_norms(f.gate_gram_abs, c * silu_curvature_range(lo, hi) * up.abs())
    slope = c * silu_slope_range(lo, hi)
    slopes = norms[0] * weighted_norms(f.up_gram_abs, slope) + norms[1] * weighted_norms(
        f.gate_gram_abs, slope
    )
    return curved * (1 + REL_MARGIN), slopes * (1 + REL_MARGIN)


def mlp_rows_screen(
    f: FoldedBlock, cen: dict, z: Tensor, eta: Tensor, rho: Tensor
) -> tuple[Tensor, Tensor]:
    """(Frobenius bound of the centre Jacobian, tube perturbation) per token, before lambda2;
    rho [T] bounds how far the normalised MLP input moves."""
    margin = 4e-13 * f.gram_abs_rowsum * (z * z).sum(-1)
    frob = (quad_form(f.h_mat, z) + margin).sqrt()
    pert = (quad_form(f.h_abs, eta) * (1 + 1e-12)).sqrt()
    m = f.w_down.shape[1]
    product = sum(  # ||W_d sum_j diag(e_j) A_j|| <= ||W_d|| sum_j max|e_j| ||A_j||
        eta[:, j * m : (j + 1) * m].amax(-1) * norm for j, norm in enumerate(f.mlp_in_norms)
    )
    pert = torch.minimum(pert, f.down_norm * product * (1 + REL_MARGIN))
    pert = torch.minimum(pert, mlp_product_pert(f, cen, rho))
    return frob * (1 + REL_MARGIN), pert


def mlp_centre_spectral(f: FoldedRange, z: Tensor) -> Tensor:
    """Upper bounds on ||W_d (sum_j diag(z_j) A_j)|| for a few tokens z: [n, k m]."""
    m = f.w_down.shape[1]
    mats = z[:, :m, None] * f.mlp_in[0][None]
    for j, a_j in enumerate(f.mlp_in[1:], start=1):
        mats.addcmul_(z[:, j * m : (j + 1) * m, None], a_j[None])
    jac = f.w_down[None] @ mats  # [n, d, d]
    return spectral_norm_certified_batched(jac) * (1 + REL_MARGIN)


def mlp_centre_lower(f: FoldedRange, z: Tensor, steps: int = 3) -> Tensor:
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


def slope_reaches(rng: FoldedRange, z: Tensor, lam2: Tensor, needed: float) -> bool:
    """Whether 1 + lambda2_t ||J_M,t|| >= needed for some token (z [T, k m], lambda2 [T]), by the
    lower bounds of mlp_centre_lower. Tokens are tried in batches, largest lambda2 ||z|| first,
    and the search stops at the first that reaches `needed` (a lower bound on any subset of the
    tokens is one on the max); False only after every token was tried."""
    order = torch.argsort(lam2 * z.norm(dim=-1), descending=True)
    for start in range(0, len(order), REFINE_BATCH):
        ids = order[start : start + REFINE_BATCH]
        if float((1 + lam2[ids] * mlp_centre_lower(rng, z[ids])).max()) >= needed:
            return True
    return False
