"""Full-capacity surrogates: the teacher block k written as an IR graph, weight for weight.

Node outputs use fixed names so that pruning, the sound Lipschitz bound and the fused
certificate kernel can find the parts of a pre-norm block:
x -> attn_norm -> q, k, v -> attn -> attn_out; resid_attn = x + attn_out;
resid_attn -> mlp_norm -> ... -> hidden -> mlp_out; out = resid_attn + mlp_out.
"""

from __future__ import annotations

import torch

from blockcert.models.adapters import BlockAdapter
from blockcert.surrogate.capacity import capacity_record
from blockcert.surrogate.ir import Graph, Node, Surrogate


def _full_capacity(heads: int, kv_heads: int, mlp_width: int, weights: dict) -> dict:
    params = sum(w.numel() for w in weights.values())
    return capacity_record(heads, kv_heads, mlp_width, None, heads, mlp_width, params)


def _linear(name: str, source: str, layer_weight, layer_bias, weights: dict) -> Node:
    weights[f"{name}.weight"] = layer_weight.detach().float().clone()
    roles = {"weight": f"{name}.weight"}
    if layer_bias is not None:
        weights[f"{name}.bias"] = layer_bias.detach().float().clone()
        roles["bias"] = f"{name}.bias"
    return Node("linear", [source], name, roles)


def _attention_tail(
    nodes: list[Node], attrs: dict, roles: dict, weights: dict, o_weight, o_bias
) -> None:
    nodes.append(Node("attention", ["q", "k", "v"], "attn", roles, attrs))
    nodes.append(_linear("attn_out", "attn", o_weight, o_bias, weights))
    nodes.append(Node("add", ["x", "attn_out"], "resid_attn"))


def extract_llama(adapter: BlockAdapter, k: int) -> Surrogate:
    layer, config = adapter.layer(k), adapter.config
    attn, mlp = layer.self_attn, layer.mlp
    rotary = adapter.teacher.model.model.rotary_emb
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    weights: dict[str, torch.Tensor] = {
        "attn_norm.weight": layer.input_layernorm.weight.detach().float().clone(),
        "mlp_norm.weight": layer.post_attention_layernorm.weight.detach().float().clone(),
        "rope.inv_freq": rotary.inv_freq.detach().float().clone(),
    }
    eps = float(layer.input_layernorm.variance_epsilon)
    nodes = [Node("rms_norm", ["x"], "attn_norm", {"weight": "attn_norm.weight"}, {"eps": eps})]
    for name in ("q", "k", "v"):
        proj = getattr(attn, f"{name}_proj")
        nodes.append(_linear(name, "attn_norm", proj.weight, proj.bias, weights))
    attrs = {
        "head_dim": attn.head_dim,
        "kv_head_of_q": [h // (n_heads // n_kv) for h in range(n_heads)],
        "scale": float(attn.scaling),
        "rope_scaling": float(rotary.attention_scaling),
    }
    rope = {"inv_freq": "rope.inv_freq"}
    _attention_tail(nodes, attrs, rope, weights, attn.o_proj.weight, attn.o_proj.bias)
    eps2 = float(layer.post_attention_layernorm.variance_epsilon)
    nodes.append(
        Node("rms_norm", ["resid_attn"], "mlp_norm", {"weight": "mlp_norm.weight"}, {"eps": eps2})
    )
    nodes.append(_linear("gate", "mlp_norm", mlp.gate_proj.weight, mlp.gate_proj.bias, weights))
    nodes.append(_linear("up", "mlp_norm", mlp.up_proj.weight, mlp.up_proj.bias, weights))
    nodes.append(Node("silu", ["gate"], "act"))
    nodes.append(Node("mul", ["act", "up"], "hidden"))
    nodes.append(_linear("mlp_out", "hidden", mlp.down_proj.weight, mlp.down_proj.bias, weights))
    nodes.append(Node("add", ["resid_attn", "mlp_out"], "out"))
    capacity = _full_capacity(n_heads, n_kv, config.intermediate_size, weights)
    return Surrogate(Graph("llama", config.hidden_size, nodes, capacity), weights)


def extract_gpt2(adapter: BlockAdapter, k: int) -> Surrogate:
    layer, config = adapter.layer(k), adapter.config
    attn, mlp = layer.attn, layer.mlp
    d = config.hidden_size
    weights: dict[str, torch.Tensor] = {
        "attn_norm.weight": layer.ln_1.weight.detach().float().clone(),
        "attn_norm.bias": layer.ln_1.bias.detach().float().clone(),
        "mlp_norm.weight": layer.ln_2.weight.detach().float().clone(),
        "mlp_norm.bias": layer.ln_2.bias.detach().float().clone(),
    }
    norm_roles = {"weight": "attn_norm.weight", "bias": "attn_norm.bias"}
    nodes = [Node("layer_norm", ["x"], "attn_norm", norm_roles, {"eps": float(layer.ln_1.eps)})]
    # HF Conv1D stores weight as [in, out]; the IR uses nn.Linear's [out, in].
    qkv_weight, qkv_bias = attn.c_attn.weight.T, attn.c_attn.bias
    for i, name in enumerate(("q", "k", "v")):
        rows = slice(i * d, (i + 1) * d)
        nodes.append(_linear(name, "attn_norm", qkv_weight[rows], qkv_bias[rows], weights))
    head_dim = attn.head_dim
    scale = head_dim**-0.5 if attn.scale_attn_weights else 1.0
    if attn.scale_attn_by_inverse_layer_idx:
        scale /= float(k + 1)
    attrs = {
        "head_dim": head_dim,
        "kv_head_of_q": list(range(attn.num_heads)),
        "scale": scale,
    }
    _attention_tail(nodes, attrs, {}, weights, attn.c_proj.weight.T, attn.c_proj.bias)
    norm_roles = {"weight": "mlp_norm.weight", "bias": "mlp_norm.bias"}
    nodes.append(
        Node("layer_norm", ["resid_attn"], "mlp_norm", norm_roles, {"eps": float(layer.ln_2.eps)})
    )
    nodes.append(_linear("fc", "mlp_norm", mlp.c_fc.weight.T, mlp.c_fc.bias, weights))
    nodes.append(Node("gelu_tanh", ["fc"], "hidden"))
    nodes.append(_linear("mlp_out", "hidden", mlp.c_proj.weight.T, mlp.c_proj.bias, weights))
    nodes.append(Node("add", ["resid_attn", "mlp_out"], "out"))
    mlp_width = weights["fc.weight"].shape[0]
    capacity = _full_capacity(attn.num_heads, attn.num_heads, mlp_width, weights)
    return Surrogate(Graph("gpt2", d, nodes, capacity), weights)


_EXTRACTORS = {"llama": extract_llama, "gpt2": extract_gpt2}


def extract_block(adapter: BlockAdapter, k: int) -> Surrogate:
    """The teacher's block k as a full-capacity surrogate (equal to it up to fp32 rounding)."""
    return _EXTRACTORS[adapter.teacher.family](adapter, k)
