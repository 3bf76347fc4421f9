"""The MLP Jacobian's move through Khatri-Rao rows: slope terms per block, curvature per prompt.

J_M(w') - J_M(w) carries terms W_d diag(s) (A dw o B x) with slopes s in the activation's
range; A dw o B x = (A kr B)(dw (x) x) with ||dw (x) x|| = ||dw|| ||x||, so such a term is at
most ||W_d diag(s) (A kr B)||: exactly at the range's midpoint, by a Gershgorin bound on the
rows' Gram matrix for the rest. Derivation: docs/soundness.md#gated-mlp.
"""

from __future__ import annotations

import torch

from blockcert.cert.activations import GELU_CURVATURE, SILU_CURVATURE, SILU_SLOPE, SILU_SLOPE_MIN
from blockcert.cert.lipschitz.margins import REL_MARGIN
from blockcert.cert.spectral import spectral_norm_certified_batched

Tensor = torch.Tensor


def _spectral_upper(matrix: Tensor) -> float:
    return float(spectral_norm_certified_batched(matrix[None])[0])


def column_weighted_norm(w_down: Tensor, rows: Tensor) -> float:
    """>= ||W_d diag(sqrt(rows))||: the Gershgorin part of the Khatri-Rao bounds."""
    return _spectral_upper(w_down * rows.sqrt()[None, :])


def paired_slope(
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
    uncertain = half * column_weighted_norm(w_down, rows)
    if mid == 0.0:
        return uncertain * (1 + REL_MARGIN)
    # ||W_d T W_d^T|| for the PSD T = total, plus T's rounding (through ||W_d||^2 ||E||_F) and
    # the triple product's: gamma ||abs(W_d)||^2 ||abs(T)||, ||abs(T)|| <= max row sum <= max D
    m, d = total.shape[0], w_down.shape[0]
    product = 2 * (2 * m + d) * 2.0**-53 * _spectral_upper(w_down.abs()) ** 2 * float(rows.max())
    exact = _spectral_upper(w_down @ total @ w_down.T) + product
    exact += down_norm**2 * float(rounding.norm()) * (1 + 1e-9)
    return (abs(mid) * exact**0.5 + uncertain) * (1 + REL_MARGIN)


def paired_curvature(w_down: Tensor, gate: Tensor, gate_gram_abs: Tensor, up: Tensor) -> float:
    """C >= ||W_d diag(s) (u o (A_g dw) o (A_g x))|| for unit x, ||dw|| <= 1, |s| <= SILU_CURVATURE
    and |u| <= max_t |up_t| (up [T, m], elementwise over the prompt's tokens; gate = A_g [m, d],
    gate_gram_abs = |A_g A_g^T|): the curvature term of J_M(w') - J_M(w), through the
    Khatri-Rao rows u_i (a_i (x) a_i) as in paired_slope (Gershgorin on their Gram
    |u_i| |K_ij| |u_j|, K = (A_g A_g^T) o (A_g A_g^T)). One spectral norm per prompt."""
    top = up.abs().amax(0)
    size = gate.norm(dim=1).pow(2) * top
    rows = top * (gate_gram_abs.pow(2) @ top) + 1e-12 * size * size.sum()  # + Gram rounding
    return SILU_CURVATURE * column_weighted_norm(w_down, rows) * (1 + REL_MARGIN)
