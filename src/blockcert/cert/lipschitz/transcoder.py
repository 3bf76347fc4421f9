"""Sound Lipschitz and saturation constants of a TopK transcoder block (exact arithmetic).

Block (families `*_transcoder`, `*_skip_transcoder`): y = x + A(norm1(x)); out = y + M(w),
w = norm2(y), M(w) = W_dec topk_relu(z) + b_dec + A_skip w_hat (+ const), z = A_enc w_hat + c
(gamma folded into A_enc and A_skip; A_skip = 0 without the skip path). Attention and the
per-token combination are those of the pre-norm block (blockcert.cert.lipschitz.block).
TopK is piecewise linear but NOT continuous: where two latents swap at a positive value the
output jumps. Per token, with the pre-activation intervals z_i +- ||A_enc,i|| lambda2_t r_y,t
over the tube: if every contested latent stays <= 0, M is W_dec,S relu(z_S) + b_dec + A_skip
w_hat on the whole tube (S the always-selected latents) and
    Lmlp_t <= lambda2_t (||W_dec,P|| ||A_enc,P|| + ||A_skip||)
(P: those that can be positive; the skip is a linear map on the normed input, bounded like any
other by its spectral norm); otherwise no finite constant is claimed (reason `topk_swap`) and
the chain uses the saturation constant alone. The skip path moves by at most
||A_skip|| min(lambda2_t r_y,t, 2 sqrt(d)) on the tube. Gated latents (h = relu(z) * v, v =
A_val w_hat + c_val, TopK by |h|) run the same swap test on intervals of |h| and bound the
Jacobian of W_dec,S h_S by its two product-rule terms (_gated_rows).
Derivation: docs/soundness.md#transcoder.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from blockcert.cert.lipschitz.attention import attention_rows
from blockcert.cert.lipschitz.folded import fold_block
from blockcert.cert.lipschitz.forward64 import forward64
from blockcert.cert.lipschitz.margins import REL_MARGIN
from blockcert.cert.lipschitz.norm import fold_gain, fold_offset, norm_factor
from blockcert.cert.lipschitz.saturation import attention_range
from blockcert.cert.spectral import spectral_norm_certified_batched, spectral_norm_upper_batched
from blockcert.errors import BlockCertError
from blockcert.surrogate.ir import Surrogate
from blockcert.surrogate.view import block_view

Tensor = torch.Tensor

REASON_SWAP = (
    "topk_swap: on this tube the top-k set of the transcoder can change at a positive "
    "activation, where TopK is discontinuous; only the saturation constant is claimed"
)


@dataclass
class TranscoderBound:
    """lipschitz: max_t (1 + Latt_t)(1 + Lmlp_t), inf if a top-k swap may lie in the tube."""

    lipschitz: float
    saturation: float
    attention: float  # max_t Latt_t
    mlp: float  # max_t Lmlp_t over the tokens without a possible swap
    min_input_norm: float
    tokens: int
    prompts: int
    swap_tokens: int  # tokens whose tube may contain a positive top-k swap
    skip_norm: float = 0.0  # >= ||A_skip|| (0 without the skip path)


def _selection(lo: Tensor, hi: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(index [T, k], valid [T, k, 1], swap [T]) from the intervals [lo, hi] [T, m] of the values
    TopK ranks over the tube: index/valid the latents selected on the whole tube with a value
    that can be positive (at most k), swap where the top-k set may change at a positive value."""
    m = lo.shape[-1]
    theta_lo = lo.topk(k, dim=-1).values[:, -1:]
    if k < m:
        theta_hi = hi.topk(k + 1, dim=-1).values[:, -1:]
    else:
        theta_hi = torch.full_like(theta_lo, -math.inf)
    candidate = hi >= theta_lo
    always = lo > theta_hi
    swap = (candidate & ~always & (hi > 0)).any(-1)
    active = always & (hi > 0)  # at most k latents
    score, index = (active.double() * (1 + torch.arange(m, dtype=torch.float64))).topk(k, -1)
    return index, (score > 0).double()[..., None], swap


def _mlp_rows(
    z: Tensor, spread: Tensor, k: int, enc: Tensor, dec_t: Tensor
) -> tuple[Tensor, Tensor]:
    """(Lmlp_t / lambda2_t [T] with inf where a positive swap may happen, swap mask [T])."""
    index, valid, swap = _selection(z - spread, z + spread, k)
    enc_rows = enc[index] * valid  # [T, k, d]
    dec_rows = dec_t[index] * valid
    norms = spectral_norm_upper_batched(enc_rows) * spectral_norm_upper_batched(dec_rows)
    rows = torch.where(swap, torch.full_like(norms, math.inf), norms * (1 + REL_MARGIN))
    return rows, swap


def relu_peaks(enc: Tensor, const: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """(||A_enc,i|| rounded up, the largest relu(z_i) = relu(A_enc,i w_hat + c_i) over any input,
    ||w_hat|| <= sqrt(d)) per latent."""
    row = enc.norm(dim=1) * (1 + REL_MARGIN)
    return row, (const + row * math.sqrt(d)).clamp_min(0.0) * (1 + REL_MARGIN)


@dataclass(frozen=True)
class GatedReads:
    """A gated transcoder's reads of w_hat (gamma folded): encoder and value rows, their norms
    (rounded up), and per latent the largest |h| = relu(z) |v| over any input (||w_hat|| <=
    sqrt(d)), from the gate's peak relu(z) (relu_peaks, as a plain transcoder's latent)."""

    enc: Tensor
    val: Tensor
    enc_row: Tensor
    val_row: Tensor
    peak: Tensor

    @classmethod
    def of(cls, view, enc: Tensor, const: Tensor, d: int) -> GatedReads:
        enc_row, gate_peak = relu_peaks(enc, const, d)
        norm2, value = view.mlp_norm, view.mlp.value
        val = fold_gain(norm2, value.matrix())
        val_const = fold_offset(norm2, value.matrix(), value.bias)
        val_row = val.norm(dim=1) * (1 + REL_MARGIN)
        value_peak = (val_const.abs() + val_row * math.sqrt(d)) * (1 + REL_MARGIN)
        return cls(enc, val, enc_row, val_row, gate_peak * value_peak * (1 + REL_MARGIN))


def _gated_rows(
    pre: tuple[Tensor, Tensor], rho: Tensor, k: int, gated: GatedReads, dec_t: Tensor
) -> tuple[Tensor, Tensor]:
    """As _mlp_rows for gated latents h = relu(z) * v, TopK by |h| (docs/soundness.md#transcoder):
    over the tube relu(z) <= g_hi, |v| <= v_hi and |h| in [lo, hi]; with the top-k set S fixed,
    ||J|| <= ||W_dec,S diag(v_hi)|| ||A_enc,S|| + ||W_dec,S diag(g_hi)|| ||A_val,S||."""
    z, v = pre
    reach_z, reach_v = rho[:, None] * gated.enc_row[None, :], rho[:, None] * gated.val_row[None, :]
    g_lo, g_hi = torch.relu(z - reach_z), torch.relu(z + reach_z)
    v_lo, v_hi = (v.abs() - reach_v).clamp_min(0.0), v.abs() + reach_v
    lo, hi = g_lo * v_lo * (1 - REL_MARGIN), g_hi * v_hi * (1 + REL_MARGIN)
    index, valid, swap = _selection(lo, hi, k)
    dec_rows = dec_t[index] * valid  # [T, k, d]
    by_value = dec_rows * v_hi.gather(-1, index)[..., None]
    by_gate = dec_rows * g_hi.gather(-1, index)[..., None]
    norms = spectral_norm_upper_batched(by_value) * spectral_norm_upper_batched(
        gated.enc[index] * valid
    ) + spectral_norm_upper_batched(by_gate) * spectral_norm_upper_batched(gated.val[index] * valid)
    rows = torch.where(swap, torch.full_like(norms, math.inf), norms * (1 + REL_MARGIN))
    return rows, swap


def transcoder_block_bound(
    surrogate: Surrogate, inputs: Iterable[Tensor], radius: float
) -> TranscoderBound:
    """Sound constants of a transcoder block on the tube of `radius` around `inputs` [b, T, d]."""
    view = block_view(surrogate)
    if view.mlp.kind != "transcoder":
        raise BlockCertError(f"transcoder_block_bound needs a transcoder, not {view.family}.")
    f = fold_block(view)
    mlp, norm2 = view.mlp, view.mlp_norm
    enc = fold_gain(norm2, mlp.encoder.matrix())  # [m, d]
    const = fold_offset(norm2, mlp.encoder.matrix(), mlp.encoder.bias)
    dec = mlp.down.matrix()  # [d, m]
    dec_t = dec.T.contiguous()
    skip = _skip_norm(view)
    gated = GatedReads.of(view, enc, const, f.d) if mlp.gated else None
    row, peak = (gated.enc_row, gated.peak) if gated is not None else relu_peaks(enc, const, f.d)
    reach = (dec.norm(dim=0) * peak).topk(mlp.k).values.sum() * (1 + REL_MARGIN)
    r = float(radius)
    totals, latts, lmlps, sats, swaps, norms = [], [], [], [], [], []
    with torch.no_grad():
        for batch in inputs:
            for x in batch.reshape(-1, *batch.shape[-2:]):
                cen = forward64(view, x)  # attention values; the MLP values are recomputed here
                latt, move, r_y = attention_rows(f, cen, r)
                lam2 = norm_factor(cen["ynorm"], r_y, f.d, norm2.eps)
                if gated is None:
                    z = cen["pre"][0]  # encoder pre-activations at the centre [T, m]
                    spread = (lam2 * r_y)[:, None] * row[None, :]
                    rows, swap = _mlp_rows(z, spread, mlp.k, enc, dec_t)
                else:
                    rows, swap = _gated_rows(cen["pre"], lam2 * r_y, mlp.k, gated, dec_t)
                lmlp = lam2 * (rows + skip)
                hidden = cen["hidden"]  # the top-k latents at the centre
                # M(y) - M(x) = W_dec (h' - h) + A_skip (w_hat' - w_hat): b_dec cancels
                sat_mlp = (hidden @ dec.T).norm(dim=-1) * (1 + REL_MARGIN) + reach
                if skip:
                    moved = torch.clamp_max(lam2 * r_y, 2 * math.sqrt(f.d))
                    sat_mlp = sat_mlp + skip * moved * (1 + REL_MARGIN)
                totals.append((1 + latt) * (1 + lmlp))
                latts.append(latt)
                lmlps.append(torch.where(swap, torch.zeros_like(lmlp), lmlp))
                sats.append(
                    (torch.minimum(attention_range(f, cen), move) + sat_mlp) * (1 + REL_MARGIN)
                )
                swaps.append(swap)
                norms.append(cen["xnorm"].min())
        total = torch.cat(totals)
        return TranscoderBound(
            lipschitz=float(total.max()),
            saturation=float(torch.cat(sats).max()),
            attention=float(torch.cat(latts).max()),
            mlp=float(torch.cat(lmlps).max()),
            min_input_norm=float(torch.stack(norms).min()),
            tokens=len(total),
            prompts=len(norms),
            swap_tokens=int(torch.cat(swaps).sum()),
            skip_norm=skip,
        )


def _skip_norm(view) -> float:
    """>= ||A_skip|| = ||W_skip diag(gamma2)|| (Cholesky-certified), 0 without a skip path."""
    if view.mlp.skip is None:
        return 0.0
    folded = fold_gain(view.mlp_norm, view.mlp.skip.matrix())
    return float(spectral_norm_certified_batched(folded[None])[0]) * (1 + REL_MARGIN)
