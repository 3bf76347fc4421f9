"""Capacity knobs and how a reduced surrogate is cut out of the full-capacity one.

Heads and MLP neurons are kept by measured importance on captured block inputs: a head's
importance is the mean squared norm of its contribution through the output projection, a
neuron's the mean squared norm of its contribution through the down projection.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from blockcert.errors import BlockCertError
from blockcert.surrogate.interpret import run_values
from blockcert.surrogate.ir import Node, Surrogate
from blockcert.surrogate.refit import refit_projections
from blockcert.surrogate.view import BlockView, block_view

LOW_RANK_NODES = ("q", "k", "v", "attn_out", "gate", "up", "fc", "mlp_out")


@dataclass(frozen=True)
class Capacity:
    """Fractions of the teacher's query heads, MLP width and (optionally) rank of d_model.

    importance_batches: training batches on which head / neuron importance is measured and
    the output projections are refitted by least squares after pruning.
    """

    full_capacity: bool = False
    head_fraction: float = 1.0
    mlp_fraction: float = 1.0
    rank_fraction: float | None = None
    importance_batches: int = 4

    def __post_init__(self):
        for name in ("head_fraction", "mlp_fraction", "rank_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise BlockCertError(f"surrogate.{name}={value} must lie in (0, 1].")

    def build(self, full: Surrogate, inputs: list[torch.Tensor]) -> Surrogate:
        """The surrogate of the teacher block `full` (what train.py asks every surrogate= class)."""
        return reduce(full, self, inputs)

    def counts(self, heads: int, mlp_width: int, d_model: int) -> tuple[int, int, int | None]:
        if self.full_capacity:
            return heads, mlp_width, None
        kept_heads = max(1, round(self.head_fraction * heads))
        kept_width = max(1, round(self.mlp_fraction * mlp_width))
        rank = None if self.rank_fraction is None else max(1, round(self.rank_fraction * d_model))
        return kept_heads, kept_width, rank


@torch.no_grad()
def importance(
    surrogate: Surrogate, inputs: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(head importance [heads], neuron importance [mlp_width]) averaged over tokens of `inputs`."""
    graph, weights, view = surrogate.graph, surrogate.weights, block_view(surrogate)
    head_dim = view.attention.head_dim
    w_o, w_down = view.attention.o.matrix(torch.float32), view.mlp.down.matrix(torch.float32)
    heads = torch.zeros(view.attention.n_heads, dtype=torch.float64)
    neurons = torch.zeros(w_down.shape[1], dtype=torch.float64)
    tokens = 0
    for x in inputs:
        values = run_values(graph, weights, x.float(), ("attn", BlockView.HIDDEN))
        attn = values["attn"].reshape(-1, len(heads), head_dim)
        per_head = torch.einsum("dhk,nhk->nhd", w_o.view(-1, len(heads), head_dim), attn)
        heads += per_head.pow(2).sum(-1).sum(0).double()
        hidden = values[BlockView.HIDDEN].reshape(-1, w_down.shape[1])
        neurons += (hidden.pow(2).sum(0) * w_down.pow(2).sum(0)).double()
        tokens += hidden.shape[0]
    return heads / tokens, neurons / tokens


def _rows(weights: dict, node: Node, index: torch.Tensor) -> None:
    for role in ("weight", "bias"):
        if role in node.weights:
            key = node.weights[role]
            weights[key] = weights[key].index_select(0, index).clone()


def _columns(weights: dict, node: Node, index: torch.Tensor) -> None:
    key = node.weights["weight"]
    weights[key] = weights[key].index_select(1, index).clone()


def keep_heads(surrogate: Surrogate, kept: list[int]) -> None:
    """Keep query heads `kept` (sorted); keep exactly the key/value heads they read."""
    graph, weights = surrogate.graph, surrogate.weights
    attn = graph.node("attn")
    head_dim, kv_of_q = attn.attrs["head_dim"], attn.attrs["kv_head_of_q"]
    kv_kept = sorted({kv_of_q[h] for h in kept})

    def expand(heads: list[int]) -> torch.Tensor:
        return torch.tensor([h * head_dim + i for h in heads for i in range(head_dim)])

    _rows(weights, graph.node("q"), expand(kept))
    for name in ("k", "v"):
        _rows(weights, graph.node(name), expand(kv_kept))
    _columns(weights, graph.node("attn_out"), expand(kept))
    attn.attrs["kv_head_of_q"] = [kv_kept.index(kv_of_q[h]) for h in kept]


def keep_neurons(surrogate: Surrogate, kept: list[int]) -> None:
    graph, weights = surrogate.graph, surrogate.weights
    index = torch.tensor(kept)
    for name in ("gate", "up", "fc"):
        if any(n.output == name for n in graph.nodes):
            _rows(weights, graph.node(name), index)
    _columns(weights, graph.node("mlp_out"), index)


def factor_low_rank(surrogate: Surrogate, rank: int) -> None:
    """Replace each projection wider than `rank` by its best rank-`rank` factorisation (SVD)."""
    for node in surrogate.graph.nodes:
        if node.output not in LOW_RANK_NODES or node.op != "linear":
            continue
        weight = surrogate.weights.pop(node.weights["weight"])
        if min(weight.shape) <= rank:
            surrogate.weights[node.weights["weight"]] = weight
            continue
        u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
        root = s[:rank].sqrt()
        down, up = f"{node.output}.down", f"{node.output}.up"
        surrogate.weights[down] = (root[:, None] * vh[:rank]).float()
        surrogate.weights[up] = (u[:, :rank] * root[None, :]).float()
        node.op = "low_rank_linear"
        node.weights = {
            "down": down,
            "up": up,
            **{k: v for k, v in node.weights.items() if k == "bias"},
        }


def reduce(full: Surrogate, capacity: Capacity, inputs: list[torch.Tensor]) -> Surrogate:
    """Cut a reduced surrogate out of `full` by importance on `inputs` (teacher block inputs)."""
    heads, width = full.graph.capacity["heads"], full.graph.capacity["mlp_width"]
    kept_heads, kept_width, rank = capacity.counts(heads, width, full.graph.d_model)
    surrogate = Surrogate(copy.deepcopy(full.graph), dict(full.weights))

    def declare(rank: int | None) -> None:
        kv_heads = len(set(surrogate.graph.node("attn").attrs["kv_head_of_q"]))
        surrogate.graph.capacity = capacity_record(
            kept_heads, kv_heads, kept_width, rank, heads, width, full.num_params
        )

    if kept_heads < heads or kept_width < width:
        head_score, neuron_score = importance(full, inputs)
        if kept_heads < heads:
            keep_heads(surrogate, sorted(head_score.topk(kept_heads).indices.tolist()))
        if kept_width < width:
            keep_neurons(surrogate, sorted(neuron_score.topk(kept_width).indices.tolist()))
        declare(None)
        refit_projections(surrogate, full, inputs)
    if rank is not None:
        factor_low_rank(surrogate, rank)
    declare(rank)
    block_view(surrogate)  # the cut must still fit the family template
    return surrogate


def capacity_record(
    heads: int,
    kv_heads: int,
    mlp_width: int,
    rank: int | None,
    teacher_heads: int,
    teacher_mlp_width: int,
    teacher_params: int,
) -> dict:
    """The capacity a graph declares (validated against its weights by `block_view`)."""
    return {
        "heads": heads,
        "kv_heads": kv_heads,
        "mlp_width": mlp_width,
        "rank": rank,
        "teacher_heads": teacher_heads,
        "teacher_mlp_width": teacher_mlp_width,
        "teacher_params": teacher_params,
    }
