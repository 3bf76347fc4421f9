"""One typed view of a pre-norm block graph, validated and resolved once.

Every surrogate family is a pre-norm residual block:
    u = norm1(x);  q, k, v = P_q u, P_k u, P_v u;  a = attention(q, k, v)
    y = x + P_o a                                         (node `resid_attn`)
    w = norm2(y);  out = y + P_down mlp(w)                (node `out`)
with mlp(w) = silu(P_gate w) * P_up w (llama) or gelu_tanh(P_fc w) (gpt2). A projection P is
`linear` (W [out, in], optional bias) or `low_rank_linear` (W = up @ down). The transcoder
families (`llama_transcoder`, `gpt2_transcoder`: the base family's norms and attention) replace
the MLP by a sparse dictionary, mlp(w) = topk_relu(P_enc w) with 1 <= k <= width latents kept
per token and P_down the decoder (blockcert.surrogate.transcoder). The skip transcoder families
(`llama_skip_transcoder`, `gpt2_skip_transcoder`) add a dense affine path beside it (Paulo,
Shabalin & Belrose 2025): mlp(w) = P_down topk_relu(P_enc w) + P_skip w, the decoder written to
node `decoder` and the sum to `mlp_out`, so `mlp_out` is the MLP's output in every family.
The gated transcoder families (`*_gated_transcoder`, `*_gated_skip_transcoder`) give each latent
a gate and a value read, like a gated MLP's neuron, and keep the k largest in magnitude:
mlp(w) = P_down topk_abs(relu(P_enc w) * P_value w) (+ P_skip w) (blockcert.surrogate.transcoder).

The IR is untrusted input: `block_view` checks a graph against its family's template before
anything reads or runs it: exact node list (ops, inputs, outputs, in order, unique outputs),
exact weight roles, whitelisted attributes with valid ranges, tensor shapes consistent with each
other and with the declared capacity, no unreferenced tensors. Anything else raises
`InvalidGraphError` naming the node (exit 3). Readers (Lipschitz bounds, fused metrics,
capacity, refit) use the returned `BlockView`, never node-name lookups of their own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from blockcert.errors import VerificationError
from blockcert.surrogate.ir import Graph, Node, Surrogate

Tensor = torch.Tensor


class InvalidGraphError(VerificationError):
    """The surrogate IR does not fit its family's block template."""


@dataclass(frozen=True)
class Projection:
    """A linear map: `weight` [out, in], or its factors `down` [r, in] and `up` [out, r]."""

    node: str
    weight: Tensor | None
    down: Tensor | None
    up: Tensor | None
    bias: Tensor | None

    @property
    def low_rank(self) -> bool:
        return self.weight is None

    @property
    def rank(self) -> int | None:
        return None if self.down is None else self.down.shape[0]

    @property
    def in_features(self) -> int:
        return (self.down if self.low_rank else self.weight).shape[1]

    @property
    def out_features(self) -> int:
        return (self.up if self.low_rank else self.weight).shape[0]

    def matrix(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The effective weight [out, in] (up @ down for a low-rank projection)."""
        if self.low_rank:
            return self.up.to(dtype) @ self.down.to(dtype)
        return self.weight.to(dtype)


@dataclass(frozen=True)
class Norm:
    """RMSNorm (`rms`: gamma * x / sqrt(mean x^2 + eps)) or LayerNorm (`layer`, centred, + beta)."""

    node: str
    kind: str
    weight: Tensor
    bias: Tensor | None
    eps: float


@dataclass(frozen=True)
class Attention:
    """Causal softmax attention; query head i reads key/value head kv_head_of_q[i]."""

    node: str
    q: Projection
    k: Projection
    v: Projection
    o: Projection
    head_dim: int
    kv_head_of_q: tuple[int, ...]
    scale: float
    inv_freq: Tensor | None  # RoPE frequencies [head_dim / 2]; None without RoPE
    rope_scaling: float

    @property
    def n_heads(self) -> int:
        return len(self.kv_head_of_q)

    @property
    def n_kv_heads(self) -> int:
        return self.k.out_features // self.head_dim


@dataclass(frozen=True)
class Mlp:
    """`gated_silu`: down(silu(gate w) * up w); `gelu`: down(gelu_tanh(fc w));
    `transcoder`: down(topk_relu(encoder w, k)) + skip(w) (down is the decoder; skip [d, d] is
    None except in the skip transcoder families); with a `value` projection (the gated
    families) down(topk_abs(relu(encoder w) * value w, k)) + skip(w)."""

    kind: str
    down: Projection
    gate: Projection | None = None
    up: Projection | None = None
    fc: Projection | None = None
    encoder: Projection | None = None
    k: int | None = None
    skip: Projection | None = None
    value: Projection | None = None

    @property
    def gated(self) -> bool:
        """A gated transcoder: signed latents relu(gate) * value, TopK by magnitude."""
        return self.value is not None

    @property
    def width(self) -> int:
        return self.down.in_features

    @property
    def inputs(self) -> tuple[Projection, ...]:
        """The projections reading the normed input w into the nonlinearity (not the skip)."""
        if self.kind == "transcoder":
            return (self.encoder,) if self.value is None else (self.encoder, self.value)
        return (self.gate, self.up) if self.kind == "gated_silu" else (self.fc,)


@dataclass(frozen=True)
class BlockView:
    family: str
    d_model: int
    attn_norm: Norm
    attention: Attention
    mlp_norm: Norm
    mlp: Mlp
    num_params: int

    # names of the values the block computes, for `run_graph(..., keep=...)`
    MID = "resid_attn"  # y = x + attention output
    ATTENTION_OUT = "attn_out"  # P_o a
    HIDDEN = "hidden"  # the MLP activation read by P_down
    MLP_OUT = "mlp_out"  # the MLP's output: P_down hidden (+ P_skip w in a skip transcoder)

    def projections(self) -> dict[str, Projection]:
        """Every projection of the block by node name."""
        a, m = self.attention, self.mlp
        named = {"q": a.q, "k": a.k, "v": a.v, "attn_out": a.o, m.down.node: m.down}
        named.update({p.node: p for p in (*m.inputs, m.skip) if p is not None})
        return named

    @property
    def last_projection(self) -> Projection | None:
        """P_down when out = resid_attn + P_down(hidden) (what the fused certificate reduction
        computes); None when another term joins the MLP output (the skip path)."""
        return self.mlp.down if self.mlp.skip is None else None


# ---- family templates: (op, inputs, output) in order; "proj" is linear or low_rank_linear ----
_ATTENTION = [
    ("proj", ("attn_norm",), "q"),
    ("proj", ("attn_norm",), "k"),
    ("proj", ("attn_norm",), "v"),
    ("attention", ("q", "k", "v"), "attn"),
    ("proj", ("attn",), "attn_out"),
    ("add", ("x", "attn_out"), "resid_attn"),
]
TEMPLATES: dict[str, list[tuple[str, tuple[str, ...], str]]] = {
    "llama": [
        ("rms_norm", ("x",), "attn_norm"),
        *_ATTENTION,
        ("rms_norm", ("resid_attn",), "mlp_norm"),
        ("proj", ("mlp_norm",), "gate"),
        ("proj", ("mlp_norm",), "up"),
        ("silu", ("gate",), "act"),
        ("mul", ("act", "up"), "hidden"),
        ("proj", ("hidden",), "mlp_out"),
        ("add", ("resid_attn", "mlp_out"), "out"),
    ],
    "gpt2": [
        ("layer_norm", ("x",), "attn_norm"),
        *_ATTENTION,
        ("layer_norm", ("resid_attn",), "mlp_norm"),
        ("proj", ("mlp_norm",), "fc"),
        ("gelu_tanh", ("fc",), "hidden"),
        ("proj", ("hidden",), "mlp_out"),
        ("add", ("resid_attn", "mlp_out"), "out"),
    ],
}
TRANSCODER = "_transcoder"  # family suffix: the base family with a transcoder MLP
SKIP_TRANSCODER = "_skip_transcoder"  # the same with an affine skip path beside the dictionary
GATED_TRANSCODER = "_gated_transcoder"  # latents relu(gate) * value, TopK by magnitude
GATED_SKIP_TRANSCODER = "_gated_skip_transcoder"  # the gated latents and the skip path
TRANSCODER_SUFFIXES = (TRANSCODER, SKIP_TRANSCODER, GATED_TRANSCODER, GATED_SKIP_TRANSCODER)


def transcoder_suffix(gated: bool, skip: bool) -> str:
    """The family suffix of a transcoder with (or without) gated latents and the skip path."""
    if gated:
        return GATED_SKIP_TRANSCODER if skip else GATED_TRANSCODER
    return SKIP_TRANSCODER if skip else TRANSCODER


def _transcoder_template(base: str, gated: bool, skip: bool) -> list:
    latents = [("proj", ("mlp_norm",), "encoder"), ("topk_relu", ("encoder",), "hidden")]
    if gated:
        latents = [
            ("proj", ("mlp_norm",), "encoder"),
            ("relu", ("encoder",), "gate"),
            ("proj", ("mlp_norm",), "value"),
            ("mul", ("gate", "value"), "latent"),
            ("topk_abs", ("latent",), "hidden"),
        ]
    if skip:
        output = [
            ("proj", ("hidden",), "decoder"),
            ("proj", ("mlp_norm",), "skip"),
            ("add", ("decoder", "skip"), "mlp_out"),
        ]
    else:
        output = [("proj", ("hidden",), "mlp_out")]
    # norms and attention exactly as the base family
    return [*TEMPLATES[base][:8], *latents, *output, ("add", ("resid_attn", "mlp_out"), "out")]


TEMPLATES.update(
    {
        base + transcoder_suffix(gated, skip): _transcoder_template(base, gated, skip)
        for base in ("llama", "gpt2")
        for gated in (False, True)
        for skip in (False, True)
    }
)


def replacing_families(base: str) -> tuple[str, ...]:
    """The surrogate families that may replace a block of teacher family `base`."""
    return (base, *(base + suffix for suffix in TRANSCODER_SUFFIXES))


_ROLES = {
    "rms_norm": ({"weight"}, set()),
    "layer_norm": ({"weight", "bias"}, set()),
    "linear": ({"weight"}, {"bias"}),
    "low_rank_linear": ({"down", "up"}, {"bias"}),
    "attention": (set(), {"inv_freq"}),
}
_ATTRS = {
    "rms_norm": {"eps"},
    "layer_norm": {"eps"},
    "attention": {"head_dim", "kv_head_of_q", "scale", "rope_scaling"},
    "topk_relu": {"k"},
    "topk_abs": {"k"},
}
_REQUIRED_ATTRS = {
    "rms_norm": {"eps"},
    "layer_norm": {"eps"},
    "topk_relu": {"k"},
    "topk_abs": {"k"},
}
_ATTENTION_REQUIRED = {"head_dim", "kv_head_of_q", "scale"}


def _fail(node: str, detail: str) -> InvalidGraphError:
    return InvalidGraphError(f"surrogate IR node {node!r}: {detail}")


def _real(node: str, name: str, value, minimum: float, strict: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise _fail(node, f"attribute {name}={value!r} must be a finite number {bound}.")
    return float(value)


def _check_node_shape(graph: Graph) -> None:
    if graph.input != "x" or graph.output != "out":
        raise _fail(graph.output, "a block graph reads `x` and writes `out`.")
    template = TEMPLATES.get(graph.family)
    if template is None:
        raise _fail("graph", f"unknown surrogate family {graph.family!r}.")
    outputs = [n.output for n in graph.nodes]
    duplicates = sorted({o for o in outputs if outputs.count(o) > 1})
    if duplicates:
        raise _fail(duplicates[0], "more than one node writes this value.")
    if len(graph.nodes) != len(template):
        extra = graph.nodes[len(template)] if len(graph.nodes) > len(template) else None
        name = extra.output if extra else template[len(graph.nodes)][2]
        raise _fail(
            name, f"the {graph.family} template has {len(template)} nodes, not {len(graph.nodes)}."
        )
    for node, (op, inputs, output) in zip(graph.nodes, template, strict=True):
        ops = ("linear", "low_rank_linear") if op == "proj" else (op,)
        if node.output != output or node.op not in ops or tuple(node.inputs) != inputs:
            raise _fail(
                node.output,
                f"expected {output} = {'|'.join(ops)}({', '.join(inputs)}), found "
                f"{node.output} = {node.op}({', '.join(node.inputs)}).",
            )
        required, optional = _ROLES.get(node.op, (set(), set()))
        roles = set(node.weights)
        if not required <= roles or not roles <= required | optional:
            raise _fail(
                node.output,
                f"weight roles {sorted(roles)} are not allowed for "
                f"{node.op} (required {sorted(required)}, optional {sorted(optional)}).",
            )
        unknown = set(node.attrs) - _ATTRS.get(node.op, set())
        if unknown:
            raise _fail(
                node.output, f"attribute(s) {sorted(unknown)} are not allowed on {node.op}."
            )
        missing = (
            _ATTENTION_REQUIRED if node.op == "attention" else _REQUIRED_ATTRS.get(node.op, set())
        ) - set(node.attrs)
        if missing:
            raise _fail(node.output, f"missing attribute(s) {sorted(missing)}.")


def _tensor(node: Node, role: str, weights: Mapping[str, Tensor], shape: tuple) -> Tensor:
    key = node.weights[role]
    if key not in weights:
        raise _fail(node.output, f"weight {role} names tensor {key!r}, which is not in the file.")
    t = weights[key]
    if not t.is_floating_point() or tuple(t.shape) != shape:
        raise _fail(
            node.output,
            f"{role} {key!r} has shape {tuple(t.shape)} {t.dtype}, expected floating {shape}.",
        )
    if not torch.isfinite(t).all():
        raise _fail(node.output, f"{role} {key!r} holds NaN or Inf.")
    return t


def _projection(node: Node, weights, out: int | None, inp: int) -> Projection:
    """Shapes: out=None takes the row count from the tensor (checked against others later)."""
    if node.op == "linear":
        key = node.weights["weight"]
        rows = out if out is not None else (weights[key].shape[0] if key in weights else -1)
        weight = _tensor(node, "weight", weights, (rows, inp))
        down = up = None
        rows = weight.shape[0]
    else:
        dkey = node.weights["down"]
        rank = weights[dkey].shape[0] if dkey in weights and weights[dkey].dim() == 2 else -1
        down = _tensor(node, "down", weights, (rank, inp))
        ukey = node.weights["up"]
        rows = out if out is not None else (weights[ukey].shape[0] if ukey in weights else -1)
        up = _tensor(node, "up", weights, (rows, rank))
        weight = None
        if rank < 1:
            raise _fail(node.output, "a low-rank projection needs rank >= 1.")
    bias = _tensor(node, "bias", weights, (rows,)) if "bias" in node.weights else None
    if rows < 1:
        raise _fail(node.output, "a projection needs at least one output.")
    return Projection(node.output, weight, down, up, bias)


def _norm(node: Node, weights, d: int) -> Norm:
    eps = _real(node.output, "eps", node.attrs["eps"], 0.0, strict=False)
    weight = _tensor(node, "weight", weights, (d,))
    bias = _tensor(node, "bias", weights, (d,)) if node.op == "layer_norm" else None
    return Norm(node.output, "rms" if node.op == "rms_norm" else "layer", weight, bias, eps)


def _attention(nodes: dict[str, Node], weights, d: int) -> Attention:
    node = nodes["attn"]
    head_dim = node.attrs["head_dim"]
    if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim < 1:
        raise _fail("attn", f"attribute head_dim={head_dim!r} must be a positive integer.")
    kv_of_q = node.attrs["kv_head_of_q"]
    if (
        not isinstance(kv_of_q, list)
        or not kv_of_q
        or not all(isinstance(h, int) and not isinstance(h, bool) for h in kv_of_q)
    ):
        raise _fail("attn", "attribute kv_head_of_q must be a non-empty list of integers.")
    n_heads = len(kv_of_q)
    k = _projection(nodes["k"], weights, None, d)
    if k.out_features % head_dim:
        raise _fail("k", f"{k.out_features} outputs are not a whole number of heads of {head_dim}.")
    n_kv = k.out_features // head_dim
    if sorted(set(kv_of_q)) != list(range(n_kv)):
        raise _fail(
            "attn",
            f"kv_head_of_q {kv_of_q} must use every key/value head 0..{n_kv - 1} and no other.",
        )
    q = _projection(nodes["q"], weights, n_heads * head_dim, d)
    v = _projection(nodes["v"], weights, n_kv * head_dim, d)
    o = _projection(nodes["attn_out"], weights, d, n_heads * head_dim)
    scale = _real("attn", "scale", node.attrs["scale"], 0.0, strict=True)
    rope_scaling = _real("attn", "rope_scaling", node.attrs.get("rope_scaling", 1.0), 0.0, True)
    inv_freq = None
    if "inv_freq" in node.weights:
        if head_dim % 2:
            raise _fail("attn", "RoPE needs an even head_dim.")
        inv_freq = _tensor(node, "inv_freq", weights, (head_dim // 2,))
        if not (inv_freq > 0).all():
            raise _fail("attn", "RoPE frequencies must be positive.")
    elif "rope_scaling" in node.attrs:
        raise _fail("attn", "rope_scaling without RoPE frequencies.")
    return Attention("attn", q, k, v, o, head_dim, tuple(kv_of_q), scale, inv_freq, rope_scaling)


def _mlp(family: str, nodes: dict[str, Node], weights, d: int) -> Mlp:
    skip = family.endswith(SKIP_TRANSCODER)  # also the gated skip family's suffix
    down_node = nodes["decoder" if skip else "mlp_out"]
    key = down_node.weights.get("weight") or down_node.weights.get("down")
    width = weights[key].shape[1] if key in weights and weights[key].dim() == 2 else -1
    down = _projection(down_node, weights, d, width)
    if family.endswith(TRANSCODER):
        k = nodes["hidden"].attrs["k"]
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= width:
            raise _fail("hidden", f"attribute k={k!r} must be an integer in 1..width={width}.")
        encoder = _projection(nodes["encoder"], weights, width, d)
        skip_proj = _projection(nodes["skip"], weights, d, d) if skip else None
        gated = family.endswith((GATED_TRANSCODER, GATED_SKIP_TRANSCODER))
        value = _projection(nodes["value"], weights, width, d) if gated else None
        return Mlp("transcoder", down, encoder=encoder, k=k, skip=skip_proj, value=value)
    if family == "llama":
        gate = _projection(nodes["gate"], weights, width, d)
        up = _projection(nodes["up"], weights, width, d)
        return Mlp("gated_silu", down, gate=gate, up=up)
    return Mlp("gelu", down, fc=_projection(nodes["fc"], weights, width, d))


def _check_capacity(graph: Graph, view: BlockView) -> None:
    cap = graph.capacity
    a = view.attention
    ranks = {p.rank for p in view.projections().values()}
    expected = {"heads": a.n_heads, "kv_heads": a.n_kv_heads, "mlp_width": view.mlp.width}
    for name, value in expected.items():
        if cap.get(name) != value:
            raise _fail("graph", f"capacity.{name}={cap.get(name)!r} but the weights give {value}.")
    if view.mlp.kind == "transcoder":
        for name, value in {"transcoder_width": view.mlp.width, "k": view.mlp.k}.items():
            if cap.get(name) != value:
                raise _fail(
                    "graph", f"capacity.{name}={cap.get(name)!r} but the graph gives {value}."
                )
    declared = cap.get("rank")
    if declared is None and ranks != {None}:
        raise _fail("graph", "capacity.rank is null but some projections are low-rank.")
    if declared is not None and any(r is not None and r > declared for r in ranks):
        raise _fail("graph", f"a projection has rank above capacity.rank={declared}.")


def block_view(surrogate: Surrogate) -> BlockView:
    """Validate `surrogate` against its family's template and return its typed view."""
    graph, weights = surrogate.graph, surrogate.weights
    _check_node_shape(graph)
    d = graph.d_model
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        raise _fail("graph", f"d_model={d!r} must be a positive integer.")
    nodes = {n.output: n for n in graph.nodes}
    view = BlockView(
        family=graph.family,
        d_model=d,
        attn_norm=_norm(nodes["attn_norm"], weights, d),
        attention=_attention(nodes, weights, d),
        mlp_norm=_norm(nodes["mlp_norm"], weights, d),
        mlp=_mlp(graph.family, nodes, weights, d),
        num_params=sum(t.numel() for t in weights.values()),
    )
    referenced = {key for n in graph.nodes for key in n.weights.values()}
    unused = sorted(set(weights) - referenced)
    if unused:
        raise _fail(
            "graph", f"tensor(s) {unused[:3]} are in the weights file but no node reads them."
        )
    _check_capacity(graph, view)
    return view
