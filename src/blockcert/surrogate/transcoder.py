"""Transcoder surrogates: the block's MLP replaced by a wider, sparse dictionary of latents.

A transcoder reads the MLP's normalised input w and writes the MLP's output (Dunefsky, Chlenski
& Nanda 2024, "Transcoders find interpretable LLM feature circuits"; EleutherAI/sparsify with
`transcode=True`, whose TopK activation this follows):
    z = W_enc w + b_enc                      [width] pre-activations (node `encoder`)
    a = topk_relu(z, k)                      relu of the k largest z, 0 elsewhere (node `hidden`)
    mlp(w) = W_dec a + b_dec                 (node `mlp_out`, the decoder)
so every token is explained by at most k latents, each one a row of W_enc (what it reads) and a
column of W_dec (what it writes). The block keeps the teacher's norms and attention; the graph
family is the base family + `_transcoder` (blockcert.surrogate.view validates it).

`skip=true` makes a skip transcoder (Paulo, Shabalin & Belrose 2025, "Transcoders beat sparse
autoencoders for interpretability"): a dense linear path beside the sparse one,
    mlp(w) = W_dec a + b_dec + W_skip w      (nodes `decoder`, `skip`, `mlp_out` = their sum)
which carries the MLP's linear part, so the latents spend their k slots on what is not linear;
family base + `_skip_transcoder`. W_skip [d, d] counts d^2 parameters (no bias: b_dec has it).

`gated=true` gives each latent a gate and a value read, the shape of a gated MLP's neuron:
    g = relu(W_enc w + b_enc)   u = W_val w + b_val   (nodes `gate`, `value`)
    a = topk_abs(g * u, k)      the k latents largest in magnitude, signed (node `hidden`)
A latent fires when its gate is open and it is among the k strongest; its value says how much
and in which direction it writes its decoder column. A ReLU latent reads one direction of w, so
at the teacher MLP's parameter budget it cannot follow the product of two reads a SwiGLU neuron
computes; the gated latent can, at 3d + 2 parameters instead of 2d + 1 (families base +
`_gated_transcoder` / `_gated_skip_transcoder`).

Initialisation (`init`): `mlp` takes encoder rows from the teacher MLP's input projections
(gate, up and their negatives for SwiGLU; fc and its negative for GELU), cycled up to `width`;
`random` uses nn.Linear's uniform(+-1/sqrt(d)) rows with zero bias. Gated, `mlp` copies teacher
neurons whole: gate rows to the encoder, up rows to the value (a GELU neuron: its fc row, value
1), the neurons that move the output most first (mean |h_j| ||W_down e_j|| on captured inputs),
then their negations; `random` draws the value rows like the encoder's. Either way the decoder, its
bias and the skip are then the ridge least-squares fit of the teacher MLP output on captured
inputs given the initial latents (sparsify starts the decoder at zero; a fitted decoder starts
from a useful surrogate, which matters on a CPU budget). Dead latents (no activation for
`dead_tokens` training tokens) get sparsify's AuxK loss (Gao et al. 2024, App. B.1): the top
k_aux = d/2 dead pre-activations must predict the MLP's residual error through the decoder.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from blockcert.errors import BlockCertError
from blockcert.surrogate.capacity import capacity_record
from blockcert.surrogate.interpret import run_graph, topk_abs, topk_relu
from blockcert.surrogate.ir import Graph, Node, Surrogate
from blockcert.surrogate.view import TRANSCODER, BlockView, block_view, transcoder_suffix

INITS = ("mlp", "random")
MLP_PARAMS = "mlp_params"  # surrogate.width: the teacher MLP's parameter budget
RIDGE = 1e-3  # times the mean diagonal of the latent Gram matrix
ATTENTION_NODES = 8  # attn_norm .. mlp_norm: shared by every family template


@dataclass(frozen=True)
class Transcoder:
    """`surrogate=transcoder`: width latents (null: the teacher's MLP width; `mlp_params`: the
    widest dictionary, skip included, within the teacher MLP's parameters), k active per token,
    skip: the affine skip path (a skip transcoder).

    importance_batches: training batches on which the decoder is initialised by least squares.
    """

    width: int | str | None = None
    k: int = 32
    init: str = "mlp"
    skip: bool = False
    gated: bool = False
    importance_batches: int = 16
    seed: int = 0

    full_capacity = False  # a transcoder is always trained (train.py reads this)

    def __post_init__(self):
        for name in ("skip", "gated"):
            if not isinstance(getattr(self, name), bool):
                raise BlockCertError(
                    f"surrogate.{name}={getattr(self, name)!r} must be true or false."
                )
        if self.init not in INITS:
            raise BlockCertError(f"surrogate.init={self.init!r} is not one of {', '.join(INITS)}.")
        sized = self.width is None or self.width == MLP_PARAMS
        if not sized and (not isinstance(self.width, int) or self.width < 1):
            raise BlockCertError(
                f"surrogate.width={self.width!r} must be a positive integer, null or {MLP_PARAMS}."
            )
        width_ok = sized or self.k <= self.width
        if not isinstance(self.k, int) or self.k < 1 or not width_ok:
            raise BlockCertError(
                f"surrogate.k={self.k!r} must be an integer in 1..surrogate.width={self.width}."
            )

    def build(self, full: Surrogate, inputs: list[torch.Tensor]) -> Surrogate:
        """The transcoder surrogate of the teacher block `full` (inputs: teacher block inputs)."""
        return to_transcoder(full, self, inputs)


@dataclass(frozen=True)
class Encoder:
    """What the latents read: W_enc [width, d], b_enc [width]; gated, also W_val and b_val."""

    weight: torch.Tensor
    bias: torch.Tensor
    value_weight: torch.Tensor | None = None
    value_bias: torch.Tensor | None = None

    def latents(self, w: torch.Tensor, k: int) -> torch.Tensor:
        """The latent activations [n, width] on normed inputs w [n, d] (the graph's `hidden`)."""
        z = w @ self.weight.T + self.bias
        if self.value_weight is None:
            return topk_relu(z, k)
        return topk_abs(torch.relu(z) * (w @ self.value_weight.T + self.value_bias), k)


def _random_rows(width: int, d: int, generator: torch.Generator) -> torch.Tensor:
    bound = 1.0 / math.sqrt(d)
    return (torch.rand(width, d, generator=generator) * 2 - 1) * bound


def _encoder_init(
    full: Surrogate, view: BlockView, width: int, config: Transcoder, inputs: list[torch.Tensor]
) -> Encoder:
    """The latents' initial reads as described in the module docstring."""
    d = view.d_model
    generator = torch.Generator().manual_seed(config.seed)
    if config.gated:
        if config.init == "random":
            rows = _random_rows(width, d, generator)
            values = _random_rows(width, d, generator)
            return Encoder(rows, torch.zeros(width), values, torch.zeros(width))
        return _gated_from_teacher(full, view, width, inputs)
    if config.init == "random":
        return Encoder(_random_rows(width, d, generator), torch.zeros(width))
    rows, biases = [], []
    for sign in (1.0, -1.0):
        for p in view.mlp.inputs:
            rows.append(sign * p.matrix(torch.float32))
            biases.append(sign * _bias(p))
    rows, biases = torch.cat(rows), torch.cat(biases)
    index = torch.arange(width) % len(rows)
    return Encoder(rows[index].clone(), biases[index].clone())


@torch.no_grad()
def _gated_from_teacher(
    full: Surrogate, view: BlockView, width: int, inputs: list[torch.Tensor]
) -> Encoder:
    """Teacher neurons as gated latents, most important first, then negated (docstring)."""
    mlp = view.mlp
    gate = mlp.inputs[0]
    weight, bias = gate.matrix(torch.float32), _bias(gate)
    if mlp.kind == "gated_silu":
        value_weight, value_bias = mlp.up.matrix(torch.float32), _bias(mlp.up)
    else:  # gelu(f) ~ relu(f) * 1
        value_weight = torch.zeros_like(weight)
        value_bias = torch.ones(len(weight))
    magnitude = torch.zeros(len(weight), dtype=torch.float64)
    for x in inputs:
        _, values = run_graph(full.graph, full.weights, x.float(), keep=(BlockView.HIDDEN,))
        hidden = values[BlockView.HIDDEN].reshape(-1, len(weight))
        magnitude += hidden.abs().sum(0).double()
    importance = magnitude * mlp.down.matrix(torch.float64).norm(dim=0)
    order = torch.argsort(importance, descending=True, stable=True)
    order = torch.cat([order, order])
    sign = torch.cat([torch.ones(len(weight)), -torch.ones(len(weight))])
    index = torch.arange(width) % len(order)
    pick, flip = order[index], sign[index][:, None]
    return Encoder(
        weight[pick] * flip,
        bias[pick] * flip[:, 0],
        value_weight[pick] * flip,
        value_bias[pick] * flip[:, 0],
    )


def _bias(p) -> torch.Tensor:
    return p.bias.float() if p.bias is not None else torch.zeros(p.out_features)


@dataclass(frozen=True)
class Decoder:
    """The least-squares fit: W_dec [d, width], b_dec [d] and W_skip [d, d] (None: no skip)."""

    weight: torch.Tensor
    bias: torch.Tensor
    skip: torch.Tensor | None


@torch.no_grad()
def fit_decoder(
    encoder: Encoder,
    k: int,
    full: Surrogate,
    inputs: list[torch.Tensor],
    skip: bool = False,
    chunk: int = 2048,
) -> Decoder:
    """Ridge least squares of the teacher MLP output on `inputs` given the encoder's latents.

    Normal equations over A = [latents(w), w (with skip), 1]: (A^T A + lambda I) X = A^T Y,
    accumulated in float64 chunk by chunk; the ones column carries b_dec.
    """
    width, d = encoder.weight.shape
    columns = width + (d if skip else 0) + 1
    gram = torch.zeros(columns, columns, dtype=torch.float64)
    cross = torch.zeros(columns, full.graph.d_model, dtype=torch.float64)
    tokens = 0
    for x in inputs:
        _, values = run_graph(full.graph, full.weights, x.float(), keep=("mlp_norm", "mlp_out"))
        w = values["mlp_norm"].reshape(-1, d)
        y = values["mlp_out"].reshape(-1, values["mlp_out"].shape[-1])
        for start in range(0, len(w), chunk):
            part = w[start : start + chunk]
            a = [encoder.latents(part, k), *([part] if skip else [])]
            a = torch.cat([*a, torch.ones(len(part), 1)], dim=1)
            gram += (a.T @ a).double()  # fp32 products per chunk, accumulated in float64
            cross += (a.T @ y[start : start + chunk]).double()
            tokens += len(part)
    if tokens == 0:
        raise BlockCertError("the transcoder decoder needs captured inputs (importance_batches).")
    ridge = RIDGE * torch.diagonal(gram).mean().clamp_min(1e-12)
    solution = torch.linalg.solve(gram + ridge * torch.eye(columns, dtype=gram.dtype), cross)
    solution = solution.T.float()  # [d, columns]
    w_skip = solution[:, width : width + d].contiguous() if skip else None
    return Decoder(solution[:, :width].contiguous(), solution[:, -1].contiguous(), w_skip)


def _mlp_nodes(k: int, skip: bool, gated: bool) -> list[Node]:
    """The transcoder's MLP nodes after `mlp_norm` (the templates of blockcert.surrogate.view)."""
    linear = ("weight", "bias")
    encoder = Node("linear", ["mlp_norm"], "encoder", {r: f"encoder.{r}" for r in linear})
    if gated:
        latents = [
            encoder,
            Node("relu", ["encoder"], "gate"),
            Node("linear", ["mlp_norm"], "value", {r: f"value.{r}" for r in linear}),
            Node("mul", ["gate", "value"], "latent"),
            Node("topk_abs", ["latent"], BlockView.HIDDEN, attrs={"k": k}),
        ]
    else:
        latents = [encoder, Node("topk_relu", ["encoder"], BlockView.HIDDEN, attrs={"k": k})]
    decoded = "decoder" if skip else BlockView.MLP_OUT
    decoder = Node("linear", [BlockView.HIDDEN], decoded, {r: f"decoder.{r}" for r in linear})
    nodes = [*latents, decoder]
    if skip:
        nodes += [
            Node("linear", ["mlp_norm"], "skip", {"weight": "skip.weight"}),
            Node("add", ["decoder", "skip"], BlockView.MLP_OUT),
        ]
    return [*nodes, Node("add", ["resid_attn", BlockView.MLP_OUT], "out")]


def to_transcoder(full: Surrogate, config: Transcoder, inputs: list[torch.Tensor]) -> Surrogate:
    """Keep the norms and attention of `full`; replace its MLP by a (skip, gated) transcoder."""
    view = block_view(full)
    if view.mlp.kind == "transcoder":
        raise BlockCertError("the block is already a transcoder; build from the teacher block.")
    width = _width(config, view)
    if config.k > width:
        raise BlockCertError(f"surrogate.k={config.k} exceeds the transcoder width {width}.")
    nodes = copy.deepcopy(full.graph.nodes[:ATTENTION_NODES])
    keys = {key for node in nodes for key in node.weights.values()}
    weights = {key: full.weights[key].clone() for key in keys}
    encoder = _encoder_init(full, view, width, config, inputs)
    decoder = fit_decoder(encoder, config.k, full, inputs, skip=config.skip)
    weights.update(
        {
            "encoder.weight": encoder.weight,
            "encoder.bias": encoder.bias,
            "decoder.weight": decoder.weight,
            "decoder.bias": decoder.bias,
        }
    )
    if config.gated:
        weights.update({"value.weight": encoder.value_weight, "value.bias": encoder.value_bias})
    if config.skip:
        weights["skip.weight"] = decoder.skip
    nodes += _mlp_nodes(config.k, config.skip, config.gated)
    cap = full.graph.capacity
    capacity = capacity_record(
        view.attention.n_heads,
        view.attention.n_kv_heads,
        width,
        None,
        cap["teacher_heads"],
        cap["teacher_mlp_width"],
        cap["teacher_params"],
    )
    capacity.update({"transcoder_width": width, "k": config.k})
    suffix = transcoder_suffix(config.gated, config.skip)
    graph = Graph(full.graph.family + suffix, full.graph.d_model, nodes, capacity)
    surrogate = Surrogate(graph, weights)
    block_view(surrogate)  # the result must fit its transcoder template
    return surrogate


def _width(config: Transcoder, view: BlockView) -> int:
    """The dictionary width `config.width` names for the teacher block `view`."""
    if config.width == MLP_PARAMS:
        teacher_mlp = (*view.mlp.inputs, view.mlp.down)
        params = sum(
            sum(t.numel() for t in (p.weight, p.down, p.up, p.bias) if t is not None)
            for p in teacher_mlp
        )
        return width_for_params(view.d_model, params, config.skip, config.gated)
    return config.width or view.mlp.width


def _per_latent(d_model: int, gated: bool) -> int:
    """Parameters of one latent: its encoder row and bias, decoder column (and value row, bias)."""
    return (3 * d_model + 2) if gated else (2 * d_model + 1)


def transcoder_params(d_model: int, width: int, skip: bool = False, gated: bool = False) -> int:
    """Parameters of the MLP part: encoder (W, b), value (W, b) when gated, decoder (W, b) and
    the skip W [d, d]."""
    fixed = d_model + (d_model * d_model if skip else 0)
    return width * _per_latent(d_model, gated) + fixed


def width_for_params(d_model: int, params: int, skip: bool = False, gated: bool = False) -> int:
    """The largest width whose MLP part has at most `params` parameters (transcoder_params)."""
    fixed = d_model + (d_model * d_model if skip else 0)
    return (params - fixed) // _per_latent(d_model, gated)


def latent_values(view: BlockView) -> tuple[str, str]:
    """The values TopK selects from (the encoder's pre-activations; gated: the signed latents)
    and the TopK latents (node `hidden`)."""
    return ("latent" if view.mlp.gated else "encoder", BlockView.HIDDEN)


class AuxK(nn.Module):
    """Dead-latent bookkeeping and sparsify's AuxK loss for a transcoder graph.

    A latent is dead once it has not fired for `dead_tokens` training tokens. With e = target -
    prediction (the block's error, which is the MLP's: out = resid_attn + mlp_out), the top
    k_aux = min(d/2, #dead) relu'd dead pre-activations decode (no bias) to e_hat and the loss is
    min(#dead / k_aux, 1) * mean_t ||e_hat_t - e_t||^2, e detached. Gated latents fire when
    non-zero, and the dead ones' AuxK activations are their k_aux signed `latent` values largest
    in magnitude.
    """

    def __init__(self, surrogate: Surrogate, dead_tokens: int):
        super().__init__()
        view = block_view(surrogate)
        self.decoder_key = surrogate.graph.node(view.mlp.down.node).weights["weight"]
        self.width = view.mlp.width
        self.gated = view.mlp.gated
        self.keep = latent_values(view)
        self.k_aux = max(1, view.d_model // 2)
        self.dead_tokens = int(dead_tokens)
        self.register_buffer("since_fired", torch.zeros(self.width, dtype=torch.long))
        self.stats: dict[str, torch.Tensor] = {}

    @staticmethod
    def applies(graph: Graph) -> bool:
        return graph.family.endswith(TRANSCODER)

    def forward(self, values: dict[str, torch.Tensor], weights, error: torch.Tensor):
        hidden = values[BlockView.HIDDEN].reshape(-1, self.width)
        with torch.no_grad():
            fired = (hidden != 0).any(0)
            self.since_fired += hidden.shape[0]
            self.since_fired[fired] = 0
            dead = self.since_fired > self.dead_tokens
            n_dead = int(dead.sum())
            self.stats = {
                "l0": (hidden != 0).sum(-1).float().mean(),
                "dead_fraction": dead.float().mean(),
            }
        if n_dead == 0:
            return hidden.new_zeros(())
        k_aux = min(self.k_aux, n_dead)
        pre = values[self.keep[0]].reshape(-1, self.width)
        if self.gated:
            masked = torch.where(dead[None], pre.abs(), torch.full_like(pre, -math.inf))
            index = masked.topk(k_aux, dim=-1).indices
            sparse = torch.zeros_like(pre).scatter(-1, index, pre.gather(-1, index))
        else:
            masked = torch.where(dead[None], pre, torch.full_like(pre, -math.inf))
            acts, index = masked.topk(k_aux, dim=-1)
            sparse = torch.zeros_like(pre).scatter(-1, index, torch.relu(acts))
        e_hat = sparse @ weights[self.decoder_key].T
        e = error.detach().reshape(-1, e_hat.shape[-1])
        scale = min(n_dead / k_aux, 1.0)
        return scale * (e_hat - e).pow(2).sum(-1).mean()
