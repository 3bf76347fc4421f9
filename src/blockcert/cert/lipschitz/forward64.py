"""The block in float64 at the tube centre: the values every bound starts from.

The sound bounds are about exact arithmetic of the IR; this forward (float64, ~1e-16 relative
rounding) gives the centre's p, q, k, v, pre-activations and output, and stands in for exact
arithmetic in the measured fp32 allowance (blockcert.cert.fp_allowance).
See docs/soundness.md#floating-point.
"""

from __future__ import annotations

import math

import torch

from blockcert.cert.lipschitz.norm import apply_norm, normalise
from blockcert.surrogate.interpret import topk_abs, topk_relu
from blockcert.surrogate.view import BlockView

Tensor = torch.Tensor


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
    """The block in float64 on one prompt x: [T, d]; returns the centre values the bounds use.

    xnorm [T] (||c_t|| of the attention norm), q, k, v [H, T, hd] (k, v per query head), p
    [H, T, T], o [H, T, hd], y [T, d] (after attention), ynorm [T], pre (the MLP's input
    projections, [T, m] each; a gated transcoder's encoder and value), hidden [T, m], out [T, d]
    (transcoders: the top-k latents, the skip path added).
    """
    a, T = view.attention, x.shape[0]
    x = x.double()
    xhat, xnorm = normalise(view.attn_norm, x)
    u = apply_norm(view.attn_norm, xhat)
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
    what, ynorm = normalise(view.mlp_norm, y)
    w = apply_norm(view.mlp_norm, what)
    mlp = view.mlp
    pre = [_linear(proj, w) for proj in mlp.inputs]
    if mlp.kind == "gated_silu":
        hidden = torch.nn.functional.silu(pre[0]) * pre[1]
    elif mlp.kind == "transcoder" and mlp.gated:
        hidden = topk_abs(torch.relu(pre[0]) * pre[1], mlp.k)
    elif mlp.kind == "transcoder":
        hidden = topk_relu(pre[0], mlp.k)
    else:
        hidden = torch.nn.functional.gelu(pre[0], approximate="tanh")
    mlp_out = _linear(mlp.down, hidden)
    if mlp.skip is not None:
        mlp_out = mlp_out + _linear(mlp.skip, w)
    out = y + mlp_out
    return {
        "xnorm": xnorm, "q": q, "k": k, "v": v, "p": p, "o": o, "y": y, "ynorm": ynorm,
        "pre": pre, "hidden": hidden, "out": out,
    }  # fmt: skip
