"""Sound Lipschitz and saturation constants of a TopK transcoder block (exact arithmetic).

Block (family `*_transcoder`): y = x + A(norm1(x)); out = y + M(w), w = norm2(y),
M(w) = W_dec topk_relu(z) + b_dec, z = A_enc w_hat + c (gamma folded into A_enc). Attention
and the per-token combination are those of the pre-norm block (blockcert.cert.lipschitz.block).
TopK is piecewise linear but NOT continuous: where two latents swap at a positive value the
output jumps. Per token, with the pre-activation intervals z_i +- ||A_enc,i|| lambda2_t r_y,t
over the tube: if every contested latent stays <= 0, M is W_dec,S relu(z_S) + b_dec on the
whole tube (S the always-selected latents) and Lmlp_t <= lambda2_t ||W_dec,P|| ||A_enc,P||
(P: those that can be positive); otherwise no finite constant is claimed (reason `topk_swap`)
and the chain uses the saturation constant alone. Derivation: docs/soundness.md#transcoder.
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
from blockcert.cert.spectral import spectral_norm_upper_batched
from blockcert.errors import BlockCertError
from blockcert.surrogate.interpret import topk_relu
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


def _mlp_rows(
    z: Tensor, spread: Tensor, k: int, enc: Tensor, dec_t: Tensor
) -> tuple[Tensor, Tensor]:
    """(Lmlp_t / lambda2_t [T] with inf where a positive swap may happen, swap mask [T])."""
    lo, hi = z - spread, z + spread
    m = z.shape[-1]
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
    valid = (score > 0).double()[..., None]
    enc_rows = enc[index] * valid  # [T, k, d]
    dec_rows = dec_t[index] * valid
    norms = spectral_norm_upper_batched(enc_rows) * spectral_norm_upper_batched(dec_rows)
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
    row = enc.norm(dim=1) * (1 + REL_MARGIN)
    dec = mlp.down.matrix()  # [d, m]
    dec_t = dec.T.contiguous()
    u = (const + row * math.sqrt(f.d)).clamp_min(0.0) * (1 + REL_MARGIN)
    reach = (dec.norm(dim=0) * u).topk(mlp.k).values.sum() * (1 + REL_MARGIN)
    r = float(radius)
    totals, latts, lmlps, sats, swaps, norms = [], [], [], [], [], []
    with torch.no_grad():
        for batch in inputs:
            for x in batch.reshape(-1, *batch.shape[-2:]):
                cen = forward64(view, x)  # attention values; the MLP values are recomputed here
                latt, move, r_y = attention_rows(f, cen, r)
                lam2 = norm_factor(cen["ynorm"], r_y, f.d, norm2.eps)
                z = cen["pre"][0]  # encoder pre-activations at the centre [T, m]
                spread = (lam2 * r_y)[:, None] * row[None, :]
                rows, swap = _mlp_rows(z, spread, mlp.k, enc, dec_t)
                lmlp = lam2 * rows
                hidden = topk_relu(z, mlp.k)
                # M(y) - M(x) = W_dec (h' - h): b_dec cancels
                sat_mlp = (hidden @ dec.T).norm(dim=-1) * (1 + REL_MARGIN) + reach
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
        )
