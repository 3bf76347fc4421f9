"""Cut heads or MLP neurons out of a block surrogate, choosing and compensating by `Pruning`.

Selection (`Pruning.select`) ranks structures by a score from `compress.scores` (importance,
wanda_sp, fluctuation) or removes them greedily by structured OBS (`obs`: the least loss
increase after re-solving the rest, `compress.lstsq.obs_keep`). Compensation
(`Pruning.update`) then rewrites the output projection that read them:
  none   the cut weights as they were (plain pruning);
  mean   FLAP's bias: b += W_:,S E[a_S], the removed features' mean contribution;
  ls     least squares on the calibration statistics: W (and b, with `bias`) minimising
         sum_t ||W a_t + b - y_t||^2 over the kept features (y_t the teacher's target).
Heads are cut as whole query heads (the key/value heads they read follow), scored as the sum
of their head_dim features; the attention output projection is what `update` rewrites.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch

from blockcert.compress import scores
from blockcert.compress.lstsq import RIDGE, NormalEquations, obs_keep, solve
from blockcert.errors import BlockCertError
from blockcert.surrogate.capacity import capacity_record, keep_heads, keep_neurons
from blockcert.surrogate.ir import Surrogate
from blockcert.surrogate.view import block_view

Tensor = torch.Tensor
SELECT = ("obs", "importance", "wanda_sp", "fluctuation")
UPDATE = ("ls", "mean", "none")


@dataclass(frozen=True)
class Pruning:
    """How one block is cut: `select` ranks, `update` compensates (see the module docstring)."""

    select: str = "obs"
    update: str = "ls"
    bias: bool = True  # ls also fits a bias on the output projection (mean: always a bias)
    ridge: float = RIDGE  # LS / OBS ridge, times the mean diagonal of the Gram matrix

    def __post_init__(self):
        if self.select not in SELECT or self.update not in UPDATE:
            raise BlockCertError(
                f"pruning select={self.select!r} update={self.update!r}: select is one of "
                f"{', '.join(SELECT)}; update one of {', '.join(UPDATE)}."
            )


@dataclass
class MlpStats:
    """Calibration statistics of one block's MLP: hidden units -> what the MLP must add
    (teacher output minus the surrogate's mid state), and sum_t w_t^2 of its normed input."""

    hidden: NormalEquations
    input_sq: Tensor


def _copy(surrogate: Surrogate) -> Surrogate:
    return Surrogate(copy.deepcopy(surrogate.graph), dict(surrogate.weights))


def _declare(surrogate: Surrogate, teacher_capacity: dict) -> Surrogate:
    """Record the capacity the cut weights have, then validate against the family template."""
    graph = surrogate.graph
    kv_head_of_q = graph.node("attn").attrs["kv_head_of_q"]
    down = surrogate.weights[graph.node("mlp_out").weights["weight"]]
    cap = teacher_capacity
    graph.capacity = capacity_record(
        len(kv_head_of_q),
        len(set(kv_head_of_q)),
        down.shape[1],
        None,
        cap["teacher_heads"],
        cap["teacher_mlp_width"],
        cap["teacher_params"],
    )
    block_view(surrogate)  # the cut must still fit the family template
    return surrogate


def _rank(
    pruning: Pruning, ranking: Tensor, equations: NormalEquations, n_keep: int, group: int
) -> Tensor:
    """Sorted kept feature indices: by OBS, or the groups of largest `ranking`."""
    if pruning.select == "obs":
        return obs_keep(equations, n_keep, group, bias=pruning.bias, ridge=pruning.ridge)
    kept = ranking.topk(n_keep).indices.sort().values
    return (kept[:, None] * group + torch.arange(group)).flatten()


def _feature_scores(select: str, weight: Tensor, equations: NormalEquations) -> Tensor:
    """Output-side score per feature for the head cut (weight [d, n] reads the features)."""
    column_sq = weight.double().pow(2).sum(0)
    if select == "fluctuation":
        return equations.variance * column_sq
    if select == "wanda_sp":
        return equations.mean_square.sqrt() * weight.double().abs().sum(0)
    return equations.mean_square * column_sq


def _compensate(
    surrogate: Surrogate,
    node: str,
    old_weight: Tensor,
    kept: Tensor,
    equations: NormalEquations,
    pruning: Pruning,
) -> None:
    """Rewrite linear node `node` (already cut to the `kept` columns) per `pruning.update`."""
    graph_node = surrogate.graph.node(node)
    old_bias_key = graph_node.weights.get("bias")
    old_bias = surrogate.weights[old_bias_key] if old_bias_key else None
    removed = torch.ones(old_weight.shape[1], dtype=torch.bool)
    removed[kept] = False
    if pruning.update == "none" or (pruning.update == "mean" and not removed.any()):
        return
    if pruning.update == "ls":
        # a projection that has a bias keeps one: the LS constant replaces it
        weight, bias = solve(equations, kept, pruning.bias or old_bias is not None, pruning.ridge)
        surrogate.weights[graph_node.weights["weight"]] = weight
    else:  # mean: FLAP's compensation of the removed features' mean contribution
        shift = (old_weight.double()[:, removed] @ equations.mean[removed]).float()
        bias = shift if old_bias is None else old_bias + shift
    if bias is not None:
        key = old_bias_key or f"{node}.bias"
        surrogate.weights[key] = bias.contiguous()
        graph_node.weights["bias"] = key


def _uncut(pruning: Pruning) -> Pruning:
    """An uncut projection is refitted without a new bias: the bias would make the block larger
    than the teacher's, and certify.py refuses a surrogate with more parameters than its block
    (a projection that has a bias keeps it)."""
    return replace(pruning, bias=False)


def cut_heads(
    surrogate: Surrogate, attention: NormalEquations, n_heads: int, pruning: Pruning
) -> Surrogate:
    """Keep `n_heads` query heads of `surrogate`; `attention`: the heads' outputs -> what the
    attention must add (teacher mid state minus the input)."""
    view = block_view(surrogate)
    head_dim, heads = view.attention.head_dim, view.attention.n_heads
    if n_heads >= heads:
        out = _copy(surrogate)
        all_heads = torch.arange(attention.n)
        uncut = _uncut(pruning)
        _compensate(out, "attn_out", view.attention.o.matrix(), all_heads, attention, uncut)
        return _declare(out, surrogate.graph.capacity)
    w_o = view.attention.o.matrix()
    per_feature = _feature_scores(pruning.select, w_o, attention)
    ranking = per_feature.view(heads, head_dim).sum(1)
    kept = _rank(pruning, ranking, attention, n_heads, head_dim)
    out = _copy(surrogate)
    keep_heads(out, sorted({int(i) // head_dim for i in kept}))
    _compensate(out, "attn_out", w_o, kept, attention, pruning)
    return _declare(out, surrogate.graph.capacity)


def neuron_scores(surrogate: Surrogate, stats: MlpStats, select: str) -> Tensor:
    """The `select` score of every MLP neuron [m] (obs: importance, its one-step proxy)."""
    view = block_view(surrogate)
    if select == "wanda_sp":
        return scores.wanda_sp(view, stats.hidden, stats.input_sq)
    if select == "fluctuation":
        return scores.fluctuation(view, stats.hidden)
    return scores.importance(view, stats.hidden)


def cut_neurons(surrogate: Surrogate, stats: MlpStats, width: int, pruning: Pruning) -> Surrogate:
    """Keep `width` MLP neurons of `surrogate` and compensate the down projection."""
    view = block_view(surrogate)
    if view.mlp.kind != "gated_silu" and view.mlp.kind != "gelu":
        raise BlockCertError(f"cannot cut neurons of a {view.mlp.kind} MLP.")
    w_down = view.mlp.down.matrix()
    if width >= view.mlp.width:
        kept = torch.arange(view.mlp.width)
    else:
        ranking = neuron_scores(surrogate, stats, pruning.select)
        kept = _rank(pruning, ranking, stats.hidden, width, 1)
    out = _copy(surrogate)
    if width < view.mlp.width:
        keep_neurons(out, kept.tolist())
    else:
        pruning = _uncut(pruning)
    _compensate(out, "mlp_out", w_down, kept, stats.hidden, pruning)
    return _declare(out, surrogate.graph.capacity)
