"""Lipschitz constants of a surrogate block on the tube around the teacher inputs.

Distance on sequences: d(X, Y) = max_t ||X_t - Y_t||_2. The tube of radius r holds every X'
with d(X', X) <= r for an evaluated teacher input X.

`sound_lipschitz` is an upper bound by construction (pre-norm block template):
  Lip(block) <= (1 + Lip(attn o norm1)) * (1 + Lip(mlp o norm2)).
  norm (RMS / Layer): ||J|| <= max|gamma| sqrt(d) / (||x|| - r) for ||x|| > r (centred for LN),
    and ||u|| <= max|gamma| sqrt(d) (+ ||beta||), so later parts see bounded inputs.
  attention head h: value path is a convex combination (||W_v||), softmax path adds
    ||dP_t||_1 <= 2 max|d logit|, with |d logit| <= scale (||dq|| K + Q ||dk||); RoPE is a
    rotation times its attention scaling.
  MLP: pre-activations bounded per neuron by interval propagation (centre +- radius * row
    norm), then |silu'| <= 1.1, |gelu'| <= 1.13 and the intervals bound the Jacobian.
  Spectral norms are sound upper bounds (blockcert.cert.spectral). Assumes exact real
  arithmetic of the IR (fp32 evaluation error is not included).
`empirical_lipschitz` is the largest ratio d(g(X+D), g(X)) / d(D) seen under random and
gradient-ascent perturbations with d(D) = r: a LOWER estimate, labelled `empirical`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from blockcert.cert.spectral import spectral_norm_upper
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Surrogate

SILU_MAX_ABS_SLOPE = 1.1  # max |silu'(a)| = 1.0998...
SILU_MIN_VALUE = -0.2785  # min silu(a) = -0.27846... at a = -1.2785
GELU_MAX_ABS_SLOPE = 1.13  # max |gelu_tanh'(a)| = 1.1289...


@dataclass
class Lipschitz:
    """value is None when the bound does not exist on this tube (e.g. ||x|| <= r at a norm)."""

    value: float | None
    kind: str  # "sound" | "empirical"
    radius: float
    method: str
    parts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def effective_weight(surrogate: Surrogate, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [out, in], bias or None) of a linear or low-rank node, in float64."""
    node, weights = surrogate.graph.node(name), surrogate.weights
    if node.op == "low_rank_linear":
        weight = weights[node.weights["up"]].double() @ weights[node.weights["down"]].double()
    else:
        weight = weights[node.weights["weight"]].double()
    bias = weights[node.weights["bias"]].double() if "bias" in node.weights else None
    return weight, bias


def _norm_centred(x: torch.Tensor, op: str) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True) if op == "layer_norm" else x


def _norm_output_bound(surrogate: Surrogate, name: str) -> tuple[float, float]:
    """(max |gamma| sqrt(d), ||beta||) of a norm node."""
    node = surrogate.graph.node(name)
    gamma = surrogate.weights[node.weights["weight"]].double()
    beta = surrogate.weights[node.weights["bias"]].double() if "bias" in node.weights else None
    return float(gamma.abs().max()) * math.sqrt(gamma.numel()), (
        float(beta.norm()) if beta is not None else 0.0
    )


@torch.no_grad()
def _tube_statistics(surrogate: Surrogate, inputs: Iterable[torch.Tensor]) -> dict:
    """Per-token norms at both norms and pre-activation magnitudes over the evaluated inputs."""
    graph = surrogate.graph
    norm1, norm2 = graph.node("attn_norm").op, graph.node("mlp_norm").op
    gated = any(n.output == "gate" for n in graph.nodes)
    keep = ("resid_attn", "gate", "up") if gated else ("resid_attn", "fc")
    x_norms, y_norms, centres = [], [], {k: [] for k in keep[1:]}
    for x in inputs:
        _, values = run_graph(graph, surrogate.weights, x.float(), keep=keep)
        x_norms.append(_norm_centred(x.double(), norm1).norm(dim=-1).flatten())
        y = values["resid_attn"].double()
        y_norms.append(_norm_centred(y, norm2).norm(dim=-1).flatten())
        for k in keep[1:]:
            centres[k].append(values[k].double().reshape(-1, values[k].shape[-1]))
    return {
        "x_norm": torch.cat(x_norms),
        "y_norm": torch.cat(y_norms),
        **{k: torch.cat(v) for k, v in centres.items()},
    }


def _attention_lipschitz(surrogate: Surrogate, u_bound: float) -> float:
    """Lipschitz of attn_out(attention(q, k, v)) w.r.t. the normed input, ||u_t|| <= u_bound."""
    attn = surrogate.graph.node("attn").attrs
    head_dim, kv_of_q = attn["head_dim"], attn["kv_head_of_q"]
    rope = (
        float(attn.get("rope_scaling", 1.0))
        if "inv_freq" in surrogate.graph.node("attn").weights
        else 1.0
    )
    scale = abs(float(attn["scale"]))
    (w_q, b_q), (w_k, b_k), (w_v, b_v) = (effective_weight(surrogate, n) for n in "qkv")
    w_o, _ = effective_weight(surrogate, "attn_out")

    def rows(w, b, h):
        part = slice(h * head_dim, (h + 1) * head_dim)
        return spectral_norm_upper(w[part]), float(b[part].norm()) if b is not None else 0.0

    head_lips, sum_form = [], 0.0
    for h, g in enumerate(kv_of_q):
        (nq, bq), (nk, bk), (nv, bv) = rows(w_q, b_q, h), rows(w_k, b_k, g), rows(w_v, b_v, g)
        q_max, k_max, v_max = (
            rope * (nq * u_bound + bq),
            rope * (nk * u_bound + bk),
            nv * u_bound + bv,
        )
        # |d logit| <= scale (||dq|| K + Q ||dk||) per unit input change
        logit = scale * rope * (nq * k_max + q_max * nk)
        lip_h = nv + 2.0 * logit * v_max  # value path + softmax path (||dP||_1 <= 2 |d logit|)
        head_lips.append(lip_h)
        sum_form += spectral_norm_upper(w_o[:, h * head_dim : (h + 1) * head_dim]) * lip_h
    stacked = spectral_norm_upper(w_o) * math.sqrt(sum(v * v for v in head_lips))
    return min(sum_form, stacked)


def _mlp_lipschitz(surrogate: Surrogate, stats: dict, rho: torch.Tensor) -> float:
    """Lipschitz of the MLP w.r.t. its normed input on per-token balls of radius rho [tokens]."""
    w_down, _ = effective_weight(surrogate, "mlp_out")
    if "gate" in stats:
        (w_g, _), (w_u, _) = effective_weight(surrogate, "gate"), effective_weight(surrogate, "up")
        spread_g = rho[:, None] * w_g.norm(dim=1)[None, :]
        spread_u = rho[:, None] * w_u.norm(dim=1)[None, :]
        lo, hi = stats["gate"] - spread_g, stats["gate"] + spread_g
        up_abs = stats["up"].abs() + spread_u
        slope_term = (SILU_MAX_ABS_SLOPE * up_abs).amax(0)
        silu_abs = torch.maximum(F.silu(hi.clamp_min(0.0)), (lo < 0) * -SILU_MIN_VALUE).amax(0)
        return spectral_norm_upper(w_down * slope_term[None, :]) * spectral_norm_upper(
            w_g
        ) + spectral_norm_upper(w_down * silu_abs[None, :]) * spectral_norm_upper(w_u)
    w_fc, _ = effective_weight(surrogate, "fc")
    return spectral_norm_upper(w_down) * GELU_MAX_ABS_SLOPE * spectral_norm_upper(w_fc)


def sound_lipschitz(
    surrogate: Surrogate, inputs: Iterable[torch.Tensor], radius: float
) -> Lipschitz:
    """Sound upper bound on Lip(g) over the tube of `radius` around `inputs` ([b, s, d] each)."""
    stats = _tube_statistics(surrogate, inputs)
    method = "pre-norm template: spectral (Schatten-2p) norms, norm/softmax Jacobian bounds"
    gamma1, beta1 = _norm_output_bound(surrogate, "attn_norm")
    gamma2, beta2 = _norm_output_bound(surrogate, "mlp_norm")
    min_x = float(stats["x_norm"].min())
    if min_x <= radius:
        return Lipschitz(None, "sound", radius, method, {"reason": f"min ||x|| {min_x:.4g} <= r"})
    norm1 = gamma1 / (min_x - radius)
    u_bound = gamma1 + beta1
    attn = norm1 * _attention_lipschitz(surrogate, u_bound)
    residual1 = 1.0 + attn
    radius_y = residual1 * radius  # tube of the MLP sub-block around the surrogate's own y
    min_y = float(stats["y_norm"].min())
    if min_y <= radius_y:
        return Lipschitz(None, "sound", radius, method, {"reason": f"min ||y|| {min_y:.4g} <= r_y"})
    per_token_norm2 = gamma2 / (stats["y_norm"] - radius_y)
    rho = per_token_norm2 * radius_y
    mlp = float(per_token_norm2.max()) * _mlp_lipschitz(surrogate, stats, rho)
    residual2 = 1.0 + mlp
    parts = {
        "norm1": norm1,
        "attn_sublayer": attn,
        "mlp_sublayer": mlp,
        "min_input_norm": min_x,
        "min_mid_norm": min_y,
        "u_bound": u_bound,
        "mlp_input_bound": gamma2 + beta2,
    }
    return Lipschitz(residual1 * residual2, "sound", radius, method, parts)


def _seq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """max over positions of the per-token L2 distance, per sequence: [b, s, d] -> [b]."""
    return (a - b).norm(dim=-1).amax(-1)


def _project(delta: torch.Tensor, radius: float) -> torch.Tensor:
    """Scale each token of delta into the ball of `radius` and make the largest one touch it."""
    norms = delta.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    delta = delta * torch.clamp(radius / norms, max=1.0)
    peak = delta.norm(dim=-1).amax(-1).clamp_min(1e-30)
    return delta * (radius / peak)[:, None, None]


def empirical_lipschitz(
    surrogate: Surrogate,
    inputs: torch.Tensor,
    radius: float,
    random_trials: int = 8,
    ascent_steps: int = 10,
    seed: int = 0,
) -> Lipschitz:
    """Largest observed d(g(X+D), g(X)) / d(D) over random and adversarial D with d(D) = r."""
    # Callers may run under inference mode (Lightning validation); the ascent needs autograd.
    with torch.inference_mode(False), torch.enable_grad():
        weights = {k: v.float().clone() for k, v in surrogate.weights.items()}
        return _empirical(
            surrogate.graph,
            weights,
            inputs.float().clone(),
            radius,
            random_trials,
            ascent_steps,
            seed,
        )


def _empirical(graph, weights, x, radius, random_trials, ascent_steps, seed) -> Lipschitz:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        base = run_graph(graph, weights, x)
        best = torch.zeros(x.shape[0], dtype=torch.float64)
        for _ in range(random_trials):
            delta = _project(torch.randn(x.shape, generator=generator), radius)
            ratio = _seq_dist(run_graph(graph, weights, x + delta), base) / radius
            best = torch.maximum(best, ratio.double())
    delta = _project(torch.randn(x.shape, generator=generator), radius).requires_grad_(True)
    step = radius / 4
    for _ in range(ascent_steps):
        ratio = _seq_dist(run_graph(graph, weights, x + delta), base) / radius
        best = torch.maximum(best, ratio.detach().double())
        (grad,) = torch.autograd.grad(ratio.sum(), delta)
        with torch.no_grad():
            direction = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            delta = _project(delta + step * direction, radius).requires_grad_(True)
    with torch.no_grad():
        ratio = _seq_dist(run_graph(graph, weights, x + delta), base) / radius
        best = torch.maximum(best, ratio.double())
    method = f"max ratio over {random_trials} random + {ascent_steps} gradient-ascent steps"
    return Lipschitz(float(best.max()), "empirical", radius, method, {"prompts": x.shape[0]})
