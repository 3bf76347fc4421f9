"""The saturation constant a: ||g(y)_t - g(x)_t|| <= ||y_t - x_t|| + a for every y in the tube.

The residual update F reads normalised inputs, so its range is bounded for ANY input: the
attention output is a convex combination of values (normalised inputs have ||c/rho|| <= sqrt(d))
and each MLP pre-activation stays in its range over the ball of radius sqrt(d). On the tube the
attention output moves by at most min(Latt_t r, move_t) and the pre-activations by their tube
intervals; a is the max over tokens of attention move + MLP move, each the smaller of the two.
It keeps the chain B_k = min(L_k B_(k-1), B_(k-1) + a_k) + eps_k finite at any radius.
Derivation: docs/soundness.md#saturation.
"""

from __future__ import annotations

import math

import torch

from blockcert.cert.activations import (
    GELU_ARGMIN,
    GELU_MIN,
    SILU_ARGMIN,
    SILU_MIN,
    activation_range,
)
from blockcert.cert.lipschitz.folded import FoldedRange
from blockcert.cert.lipschitz.forward64 import forward64
from blockcert.cert.lipschitz.margins import REL_MARGIN
from blockcert.cert.lipschitz.mlp import mlp_state, quad_form, slope_reaches
from blockcert.cert.lipschitz.norm import norm_factor

Tensor = torch.Tensor


def attention_range(f: FoldedRange, cen: dict) -> Tensor:
    """[T] >= ||attn_out(X')_t - attn_out(X)_t|| for ANY input X': per head ||W_o,h A_v,g||
    sqrt(d) (values of normalised inputs, less their constant part) plus ||W_o,h (o_t - c_v)||
    (o' is a convex combination of values)."""
    root_d = math.sqrt(f.d)
    o_c = cen["o"] - f.v_const[:, None, :]  # [H, T, hd]
    centre = torch.einsum("hij,htj->hti", f.o_metric, o_c).norm(dim=-1)
    centre = centre + f.o_slack[:, None] * o_c.norm(dim=-1)
    return (f.c_ov[:, None] * root_d + centre).sum(0)


def saturation_rows(f: FoldedRange, cen: dict, move: Tensor, spread: Tensor) -> Tensor:
    """a_t [T] with ||F(y)_t - F(x)_t|| <= a_t for every y in the tube (F: the residual update).

    move [T]: how far the attention output moves on the tube; spread [T]: how far the MLP's
    normalised input moves (lambda2 r_y). Both are capped by what holds for ANY input: the
    attention output is a convex combination of values, and a normalised vector has norm
    <= sqrt(d), so it moves by at most 2 sqrt(d) and each pre-activation stays in its range over
    the ball of radius sqrt(d).
    """
    root_d = math.sqrt(f.d)
    attn = torch.minimum(attention_range(f, cen), move)  # [T]
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
    quad = (quad_form(f.down_gram_abs, w) * (1 + 1e-12)).sqrt()
    mlp = torch.minimum(quad, f.down_norm * w.norm(dim=-1))
    return (attn + mlp) * (1 + REL_MARGIN)


def saturated_step(
    rng: FoldedRange, prompts: list[Tensor], r: float, shells: int, bound: float
) -> float | None:
    """The saturation constant a for ANY input when the chain's step from B = bound is B + a
    whatever L the block bound's passes could give; None when this does not settle the step.

    a here is the bound that holds for ANY input (saturation_rows with nothing known of the
    tube: the attention output moves by at most the range of its values, the MLP's normalised
    input by at most 2 sqrt(d)), so it needs no per-source pass: a forward at the centre per
    prompt. Every pass's L is at least max_t (1 + lambda2_t(r/n) ||J_M,t||) (each shell's
    Lmlp_t is at least lambda2 ||J_M,t||, and lambda2 grows with the MLP's tube, at least the
    smallest shell's radius r/n), so when that is >= 1 + a / B, min(L B, B + a) = B + a for every
    L the passes could produce. The passes' own a is at most this one and equal to it once the
    tube is wide enough for both caps to bind (B far above the token norms, where this is
    tried)."""
    done, coeffs, lams = [], [], []
    for x in prompts:
        cen = forward64(rng.view, x)
        anywhere = torch.full_like(cen["xnorm"], math.inf)
        done.append(saturation_rows(rng, cen, anywhere, anywhere))
        coeffs.append(mlp_state(rng, cen, torch.zeros_like(cen["ynorm"]))[0])
        lams.append(norm_factor(cen["ynorm"], r / shells, rng.d, rng.view.mlp_norm.eps))
    saturation = float(torch.cat(done).max())
    if not slope_reaches(rng, torch.cat(coeffs), torch.cat(lams), 1 + saturation / bound):
        return None
    return saturation
