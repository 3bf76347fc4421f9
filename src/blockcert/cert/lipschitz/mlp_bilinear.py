"""The gated MLP's tube term through its bilinear form: ||J_M(w') - J_M(w)|| per token.

(J_M(w') - J_M(w)) x = W_d [silu'(g') o (A_u dw) o (A_g x) + mean_tau silu'(g_tau) o (A_g dw) o
(A_u x) + u o mean_tau silu''(g_tau) o (A_g dw) o (A_g x)] is bilinear in (dw, x): three
Khatri-Rao blocks M with coefficients within h of their centre values c on the tube
||dw|| <= rho, so ||J_M(w') - J_M(w)|| <= rho (||W~ diag(c) M|| + ||W~ diag(e) M||), |e| <= h:
the first per token from one certified eigenvalue (centre_bilinear), the second by AM-GM on
the Khatri-Rao Gram and a Perron bound (tube_spread). Notation of blockcert.cert.lipschitz.mlp.
Derivation: docs/soundness.md#mlp-bilinear-tube-term.
"""

from __future__ import annotations

import torch

from blockcert.cert.activations import (
    SILU_JERK,
    SILU_SLOPE,
    SILU_SLOPE_MIN,
    silu_curvature,
    silu_curvature_range,
    silu_slope,
)
from blockcert.cert.lipschitz.margins import REL_MARGIN
from blockcert.cert.spectral import (
    perron_root_upper,
    spectral_norm_certified_batched,
    top_eigenvalue_certified_batched,
)

Tensor = torch.Tensor

GRAM_ROUNDING = 5e-12  # float64 rounding of T_ab,ij (and of Y) relative to size_a,i size_b,j
BATCH_ENTRIES = 2**25  # entries of the m x m matrices Y formed together (256 MiB)


def bilinear_products(w_down: Tensor, gate: Tensor, up: Tensor) -> dict:
    """Per-block products ([m, m] each) of the gated MLP's Khatri-Rao Gram.

    T_11 = T_22 = UU o GG, T_12 = T_21 = UG o UG^T, T_13 = T_23 = UG o GG, T_33 = GG o GG
    (UU = A_u A_u^T, GG = A_g A_g^T, UG = A_u A_g^T). The two slope blocks share their centre
    c_1 = c_2, so Y = D_1 S D_1 + D_1 C D_3 + D_3 C^T D_1 + D_3 R D_3 with S = T_11 + T_12 +
    T_21 + T_22 and C = T_13 + T_23; their spreads differ, so D takes the abs blocks apart."""
    gg, uu, ug = gate @ gate.T, up @ up.T, up @ gate.T
    slope_pair = uu * gg
    cross = ug * ug.T
    mixed = ug * gg
    curved = gg * gg
    norm_g, norm_u = gate.norm(dim=1), up.norm(dim=1)
    return {
        "S": 2 * (slope_pair + cross),
        "C": 2 * mixed,
        "R": curved,
        "pair_abs": slope_pair.abs(),  # |T_11| = |T_22|
        "cross_abs": cross.abs(),  # |T_12| = |T_21|
        "mixed_abs": mixed.abs(),  # |T_13| = |T_23|
        "curved_abs": curved.abs(),  # |T_33|
        "size_slope": norm_g * norm_u,  # ||p_i|| ||q_i|| of the two slope blocks
        "size_curved": norm_g * norm_g,
        "gate_norms": norm_g,
        "down_abs_norm": float(spectral_norm_certified_batched(w_down.abs()[None])[0]),
    }


def _centres(g: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    return silu_slope(g), u * silu_curvature(g)


def centre_bilinear(w_down: Tensor, prod: dict, g: Tensor, u: Tensor) -> Tensor:
    """[n] >= ||W~ diag(c) M|| for the tokens' pre-activations g, u [n, m] (float64)."""
    out = []
    m, d = w_down.shape[1], w_down.shape[0]
    batch = max(1, min(8, BATCH_ENTRIES // (m * m)))
    for start in range(0, g.shape[0], batch):
        c1, c3 = _centres(g[start : start + batch], u[start : start + batch])
        y = c1[:, :, None] * prod["S"] * c1[:, None, :]
        mix = c1[:, :, None] * prod["C"] * c3[:, None, :]
        y += mix + mix.transpose(1, 2)
        y += c3[:, :, None] * prod["R"] * c3[:, None, :]
        mats = w_down @ y @ w_down.T
        mats = (mats + mats.transpose(1, 2)) / 2
        top = top_eigenvalue_certified_batched(mats).clamp_min(0.0)
        # Y's own rounding: |dY_ij| <= GRAM_ROUNDING sigma_i sigma_j, so ||W_d dY W_d^T|| <=
        # GRAM_ROUNDING (sum_i sigma_i ||W_d,:i||)^2; the triple product's as in paired_slope
        sigma = c1.abs() * 2 * prod["size_slope"] + c3.abs() * prod["size_curved"]
        gram = GRAM_ROUNDING * (sigma @ w_down.norm(dim=0)).pow(2)
        rowsum = y.abs().sum(-1).amax(-1)
        product = 2 * (2 * m + d) * 2.0**-53 * prod["down_abs_norm"] ** 2 * rowsum
        out.append((top + gram + product).sqrt())
    return torch.cat(out) * (1 + REL_MARGIN)


def coefficient_spread(
    prod: dict, g: Tensor, u: Tensor, rho: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """(h_end, h_mean, h_curved) [..., m]: how far the endpoint's slope silu'(g'), the mean
    slope and u o the mean curvature along the segment move from their centre values on the
    tube ||dw|| <= rho [...] (g, u [..., m] broadcast against rho[..., None])."""
    reach = rho[..., None] * prod["gate_norms"] * (1 + REL_MARGIN) + 1e-12
    lo, hi = g - reach, g + reach
    bend = silu_curvature_range(lo, hi)
    c1 = silu_slope(g)
    width = torch.maximum(SILU_SLOPE - c1, c1 - SILU_SLOPE_MIN)
    h_end = torch.minimum(bend * reach, width) * (1 + REL_MARGIN) + 1e-12
    h_mean = torch.minimum(bend * reach / 2, width) * (1 + REL_MARGIN) + 1e-12
    jerk = torch.minimum(SILU_JERK * reach / 2, bend + silu_curvature(g).abs())
    h_curved = u.abs() * jerk * (1 + REL_MARGIN) + 1e-12 * (1 + u.abs())
    return h_end, h_mean, h_curved


def tube_spread(
    w_down_gram_abs: Tensor, prod: dict, g: Tensor, u: Tensor, rho: Tensor, iterations: int = 6
) -> Tensor:
    """[...] >= ||W~ diag(e) M|| over |e| <= h (coefficient_spread at rho [...]), per unit rho."""
    h1, h2, h3 = coefficient_spread(prod, g, u, rho)
    pair, cross, mixed = prod["pair_abs"], prod["cross_abs"], prod["mixed_abs"]
    curved_in = h3 @ mixed.T  # both slope blocks meet the curvature block through |T_13|
    d = h1 * (h1 @ pair + h2 @ cross + curved_in)
    d = d + h2 * (h1 @ cross + h2 @ pair + curved_in)
    d = d + h3 * ((h1 + h2) @ mixed + h3 @ prod["curved_abs"])
    # T's rounding adds GRAM_ROUNDING tau_i sum_j tau_j to D_i (tau = sum_a h_a size_a)
    tau = (h1 + h2) * prod["size_slope"] + h3 * prod["size_curved"]
    d = d + GRAM_ROUNDING * tau * tau.sum(-1, keepdim=True)
    d = d.clamp_min(0.0)
    root = perron_root_upper(lambda y: (d * y) @ w_down_gram_abs, torch.ones_like(d), iterations)
    return (root * (1 + 1e-9)).sqrt() * (1 + REL_MARGIN)
