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

Initialisation (`init`): `mlp` takes encoder rows from the teacher MLP's input projections
(gate, up and their negatives for SwiGLU; fc and its negative for GELU), cycled up to `width`;
`random` uses nn.Linear's uniform(+-1/sqrt(d)) rows with zero bias. Either way the decoder and
its bias are then the ridge least-squares fit of the teacher MLP output on captured inputs given
the initial latents (sparsify starts the decoder at zero; a fitted decoder starts from a useful
surrogate, which matters on a CPU budget). Dead latents (no activation for `dead_tokens` training
tokens) get sparsify's AuxK loss (Gao et al. 2024, App. B.1): the top k_aux = d/2 dead
pre-activations must predict the block's residual error through the decoder.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from blockcert.errors import BlockCertError
from blockcert.surrogate.capacity import capacity_record
from blockcert.surrogate.interpret import run_graph, topk_relu
from blockcert.surrogate.ir import Graph, Node, Surrogate
from blockcert.surrogate.view import TRANSCODER, BlockView, block_view

INITS = ("mlp", "random")
RIDGE = 1e-3  # times the mean diagonal of the latent Gram matrix
ATTENTION_NODES = 8  # attn_norm .. mlp_norm: shared by every family template


@dataclass(frozen=True)
class Transcoder:
    """`surrogate=transcoder`: width latents (null: the teacher's MLP width), k active per token.

    importance_batches: training batches on which the decoder is initialised by least squares.
    """

    width: int | None = None
    k: int = 32
    init: str = "mlp"
    importance_batches: int = 16
    seed: int = 0

    full_capacity = False  # a transcoder is always trained (train.py reads this)

    def __post_init__(self):
        if self.init not in INITS:
            raise BlockCertError(f"surrogate.init={self.init!r} is not one of {', '.join(INITS)}.")
        if self.width is not None and (not isinstance(self.width, int) or self.width < 1):
            raise BlockCertError(f"surrogate.width={self.width!r} must be a positive integer.")
        width_ok = self.width is None or self.k <= self.width
        if not isinstance(self.k, int) or self.k < 1 or not width_ok:
            raise BlockCertError(
                f"surrogate.k={self.k!r} must be an integer in 1..surrogate.width={self.width}."
            )

    def build(self, full: Surrogate, inputs: list[torch.Tensor]) -> Surrogate:
        """The transcoder surrogate of the teacher block `full` (inputs: teacher block inputs)."""
        return to_transcoder(full, self, inputs)


def _encoder_init(full: Surrogate, view: BlockView, width: int, init: str, seed: int):
    """(W_enc [width, d], b_enc [width]) as described in the module docstring."""
    d = view.d_model
    generator = torch.Generator().manual_seed(seed)
    if init == "random":
        bound = 1.0 / math.sqrt(d)
        weight = (torch.rand(width, d, generator=generator) * 2 - 1) * bound
        return weight, torch.zeros(width)
    rows, biases = [], []
    for sign in (1.0, -1.0):
        for p in view.mlp.inputs:
            rows.append(sign * p.matrix(torch.float32))
            bias = p.bias if p.bias is not None else torch.zeros(p.out_features)
            biases.append(sign * bias.float())
    rows, biases = torch.cat(rows), torch.cat(biases)
    index = torch.arange(width) % len(rows)
    return rows[index].clone(), biases[index].clone()


@torch.no_grad()
def fit_decoder(
    encoder: tuple[torch.Tensor, torch.Tensor],
    k: int,
    full: Surrogate,
    inputs: list[torch.Tensor],
    chunk: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge least squares (W_dec [d, width], b_dec [d]) of the teacher MLP output on `inputs`.

    Normal equations over A = [topk_relu(W_enc w + b_enc), 1]: (A^T A + lambda I) X = A^T Y,
    accumulated in float64 chunk by chunk; the ones column carries b_dec (not regularised much).
    """
    w_enc, b_enc = encoder
    width = w_enc.shape[0]
    gram = torch.zeros(width + 1, width + 1, dtype=torch.float64)
    cross = None
    for x in inputs:
        _, values = run_graph(full.graph, full.weights, x.float(), keep=("mlp_norm", "mlp_out"))
        w = values["mlp_norm"].reshape(-1, w_enc.shape[1])
        y = values["mlp_out"].reshape(-1, values["mlp_out"].shape[-1])
        for start in range(0, len(w), chunk):
            a = topk_relu(w[start : start + chunk] @ w_enc.T + b_enc, k)
            a = torch.cat([a, torch.ones(len(a), 1)], dim=1)
            gram += (a.T @ a).double()
            part = (a.T @ y[start : start + chunk]).double()
            cross = part if cross is None else cross + part
    if cross is None:
        raise BlockCertError("the transcoder decoder needs captured inputs (importance_batches).")
    ridge = RIDGE * torch.diagonal(gram).mean().clamp_min(1e-12)
    solution = torch.linalg.solve(gram + ridge * torch.eye(width + 1, dtype=gram.dtype), cross)
    return solution[:width].T.float().contiguous(), solution[width].float().contiguous()


def to_transcoder(full: Surrogate, config: Transcoder, inputs: list[torch.Tensor]) -> Surrogate:
    """Keep the norms and attention of `full`; replace its MLP by a TopK transcoder."""
    view = block_view(full)
    if view.mlp.kind == "transcoder":
        raise BlockCertError("the block is already a transcoder; build from the teacher block.")
    width = config.width or view.mlp.width
    if config.k > width:
        raise BlockCertError(f"surrogate.k={config.k} exceeds the transcoder width {width}.")
    nodes = copy.deepcopy(full.graph.nodes[:ATTENTION_NODES])
    keys = {key for node in nodes for key in node.weights.values()}
    weights = {key: full.weights[key].clone() for key in keys}
    w_enc, b_enc = _encoder_init(full, view, width, config.init, config.seed)
    w_dec, b_dec = fit_decoder((w_enc, b_enc), config.k, full, inputs)
    weights.update(
        {
            "encoder.weight": w_enc,
            "encoder.bias": b_enc,
            "decoder.weight": w_dec,
            "decoder.bias": b_dec,
        }
    )
    linear = ("weight", "bias")
    nodes += [
        Node("linear", ["mlp_norm"], "encoder", {r: f"encoder.{r}" for r in linear}),
        Node("topk_relu", ["encoder"], "hidden", attrs={"k": config.k}),
        Node("linear", ["hidden"], "mlp_out", {r: f"decoder.{r}" for r in linear}),
        Node("add", ["resid_attn", "mlp_out"], "out"),
    ]
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
    graph = Graph(full.graph.family + TRANSCODER, full.graph.d_model, nodes, capacity)
    surrogate = Surrogate(graph, weights)
    block_view(surrogate)  # the result must fit the transcoder template
    return surrogate


def transcoder_params(d_model: int, width: int) -> int:
    """Parameters of the MLP part: encoder (W, b) and decoder (W, b)."""
    return 2 * d_model * width + width + d_model


class AuxK(nn.Module):
    """Dead-latent bookkeeping and sparsify's AuxK loss for a transcoder graph.

    A latent is dead once it has not fired for `dead_tokens` training tokens. With e = target -
    prediction (the block's error, which is the MLP's: out = resid_attn + mlp_out), the top
    k_aux = min(d/2, #dead) relu'd dead pre-activations decode (no bias) to e_hat and the loss is
    min(#dead / k_aux, 1) * mean_t ||e_hat_t - e_t||^2, e detached.
    """

    keep = ("encoder", BlockView.HIDDEN)

    def __init__(self, graph: Graph, dead_tokens: int):
        super().__init__()
        node = graph.node("mlp_out")
        self.decoder_key = node.weights["weight"]
        self.width = graph.capacity["transcoder_width"]
        self.k_aux = max(1, graph.d_model // 2)
        self.dead_tokens = int(dead_tokens)
        self.register_buffer("since_fired", torch.zeros(self.width, dtype=torch.long))
        self.stats: dict[str, torch.Tensor] = {}

    @staticmethod
    def applies(graph: Graph) -> bool:
        return graph.family.endswith(TRANSCODER)

    def forward(self, values: dict[str, torch.Tensor], weights, error: torch.Tensor):
        hidden = values[BlockView.HIDDEN].reshape(-1, self.width)
        with torch.no_grad():
            fired = (hidden > 0).any(0)
            self.since_fired += hidden.shape[0]
            self.since_fired[fired] = 0
            dead = self.since_fired > self.dead_tokens
            n_dead = int(dead.sum())
            self.stats = {
                "l0": (hidden > 0).sum(-1).float().mean(),
                "dead_fraction": dead.float().mean(),
            }
        if n_dead == 0:
            return hidden.new_zeros(())
        k_aux = min(self.k_aux, n_dead)
        pre = values["encoder"].reshape(-1, self.width)
        masked = torch.where(dead[None], pre, torch.full_like(pre, -math.inf))
        acts, index = masked.topk(k_aux, dim=-1)
        sparse = torch.zeros_like(pre).scatter(-1, index, torch.relu(acts))
        e_hat = sparse @ weights[self.decoder_key].T
        e = error.detach().reshape(-1, e_hat.shape[-1])
        scale = min(n_dead / k_aux, 1.0)
        return scale * (e_hat - e).pow(2).sum(-1).mean()
