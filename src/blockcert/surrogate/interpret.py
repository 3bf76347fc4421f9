"""Reference interpreter of the surrogate IR in plain torch (no training code).

`run_graph` evaluates a graph on `x: [batch, seq, d_model]`; every prompt starts at position 0
and attention is causal. The same function is differentiated during training, so the trained
surrogate and the certified one are the same computation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from blockcert.surrogate.ir import Graph, Node

Tensor = torch.Tensor


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # As HF LlamaRMSNorm: normalise in (at least) fp32, cast back, then scale; float64 stays
    # float64 (exact-arithmetic checks of the IR must not round through fp32 here)
    xf = x if x.dtype == torch.float64 else x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return F.linear(x, weight, bias)


def low_rank_linear(x: Tensor, down: Tensor, up: Tensor, bias: Tensor | None = None) -> Tensor:
    """weight ~ up @ down with down: [rank, in], up: [out, rank]."""
    return F.linear(F.linear(x, down), up, bias)


def rotary(x: Tensor, inv_freq: Tensor, scaling: float) -> Tensor:
    """RoPE as HF's rotate_half convention; x: [batch, heads, seq, head_dim]."""
    positions = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq.float()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = (emb.cos() * scaling).to(x.dtype), (emb.sin() * scaling).to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    head_dim: int,
    kv_head_of_q: list[int],
    scale: float,
    inv_freq: Tensor | None = None,
    rope_scaling: float = 1.0,
) -> Tensor:
    """Causal softmax attention; q: [b, s, Hq*hd], k, v: [b, s, Hkv*hd] -> [b, s, Hq*hd].

    Query head i reads key/value head `kv_head_of_q[i]` (grouped-query attention).
    """
    b, s, _ = q.shape
    q = q.view(b, s, -1, head_dim).transpose(1, 2)
    k = k.view(b, s, -1, head_dim).transpose(1, 2)
    v = v.view(b, s, -1, head_dim).transpose(1, 2)
    if inv_freq is not None:
        q, k = rotary(q, inv_freq, rope_scaling), rotary(k, inv_freq, rope_scaling)
    index = torch.tensor(kv_head_of_q, device=q.device)
    k, v = k.index_select(1, index), v.index_select(1, index)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    return out.transpose(1, 2).reshape(b, s, -1)


def gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def topk_relu(x: Tensor, k: int) -> Tensor:
    """TopK latents (sparsify's transcoder activation): relu of the k largest entries of the
    last axis, zeros elsewhere; at most k nonzeros per token. x: [..., width]."""
    values, index = x.topk(k, dim=-1)
    return torch.zeros_like(x).scatter(-1, index, F.relu(values))


def topk_abs(x: Tensor, k: int) -> Tensor:
    """Signed TopK latents (a gated transcoder's activation): the k entries of the last axis
    largest in magnitude, kept with their sign, zeros elsewhere. x: [..., width]."""
    index = x.abs().topk(k, dim=-1).indices
    return torch.zeros_like(x).scatter(-1, index, x.gather(-1, index))


OPS: dict[str, Callable[..., Tensor]] = {
    "rms_norm": rms_norm,
    "layer_norm": layer_norm,
    "linear": linear,
    "low_rank_linear": low_rank_linear,
    "attention": attention,
    "silu": F.silu,
    "gelu_tanh": gelu_tanh,
    "topk_relu": topk_relu,
    "relu": F.relu,
    "topk_abs": topk_abs,
    "mul": torch.mul,
    "add": torch.add,
}


def run_node(node: Node, values: Mapping[str, Tensor], weights: Mapping[str, Tensor]) -> Tensor:
    args = [values[name] for name in node.inputs]
    kwargs = {role: weights[key] for role, key in node.weights.items()}
    return OPS[node.op](*args, **kwargs, **node.attrs)


def run_graph(
    graph: Graph, weights: Mapping[str, Tensor], x: Tensor, keep: tuple[str, ...] = ()
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Evaluate `graph` on x; with `keep`, also return those intermediate values by name."""
    values = run_values(graph, weights, x, (graph.output, *keep))
    if keep:
        return values[graph.output], {name: values[name] for name in keep}
    return values[graph.output]


def run_values(
    graph: Graph, weights: Mapping[str, Tensor], x: Tensor, names: tuple[str, ...]
) -> dict[str, Tensor]:
    """The intermediate values `names` of `graph` on x, evaluating nodes (in order) only until
    all of them exist: a caller that discards the output skips what follows them (for the error
    metrics, the last projection, which the fused reduction computes itself)."""
    values = {graph.input: x}
    wanted = set(names)
    for node in graph.nodes:
        if wanted <= values.keys():
            break
        values[node.output] = run_node(node, values, weights)
    missing = wanted - values.keys()
    if missing:
        raise KeyError(f"the graph computes no value named {sorted(missing)}")
    return {name: values[name] for name in names}


def run_from(
    graph: Graph, weights: Mapping[str, Tensor], given: Mapping[str, Tensor], names: tuple[str, ...]
) -> dict[str, Tensor]:
    """The values `names` computed from the values `given` alone (e.g. a transcoder's MLP from
    its normed input `mlp_norm`): nodes run in graph order once all their inputs are known, and
    nodes that need anything else (the part of the block before `given`) do not run."""
    values = dict(given)
    wanted = set(names)
    for node in graph.nodes:
        if wanted <= values.keys():
            break
        if node.output not in values and all(name in values for name in node.inputs):
            values[node.output] = run_node(node, values, weights)
    missing = wanted - values.keys()
    if missing:
        raise KeyError(f"the values {sorted(missing)} do not follow from {sorted(given)}")
    return {name: values[name] for name in names}


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
