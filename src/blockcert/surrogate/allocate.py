"""Capacity allocation by sensitivity: a global MLP-neuron budget spread over blocks.

A flat cut keeps the same fraction of every block's neurons; blocks differ in how much the
model's output suffers from each removed neuron, so a global budget B = sum_k n_k goes further
when spread by measured sensitivity (as sublayer-pruning work such as SPRINT does).

First-order model of the stitched loss. Replacing block k alone by its reduced surrogate
raises KL(teacher || stitched) by s_k (measured on calibration prompts, the other blocks being
the teacher's). Within block k, neuron n carries importance imp_k(n) (mean squared contribution
through the down projection, `capacity.importance`); the loss is taken additive in the removed
importance, calibrated on the flat cut P_k (the neurons a flat fraction removes):

    loss(P) ~ sum_k w_k * sum_{n in P_k} imp_k(n),   w_k = s_k / sum_{n in P_k} imp_k(n).

Keeping the B neurons of largest score w_k * imp_k(n) minimises it under the budget
(`allocate`); within a block the order is the importance order, so block k's surrogate is the
usual importance cut (`Capacity.build`) at width n_k.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from blockcert.errors import BlockCertError
from blockcert.models.adapters import BlockAdapter
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Surrogate

Tensor = torch.Tensor


def allocate(scores: Sequence[Tensor], budget: int, floor: int = 1) -> list[int]:
    """Neurons kept per block: the `budget` largest scores overall, at least `floor` per block.

    scores[k]: [width_k] (any real values). Returns n_k with sum n_k == budget exactly and
    floor <= n_k <= width_k (ties broken by block order, then neuron order: deterministic).
    """
    widths = [len(s) for s in scores]
    if not floor * len(widths) <= budget <= sum(widths) or floor > min(widths, default=0):
        raise BlockCertError(
            f"a budget of {budget} neurons cannot be spread over blocks of widths {widths} with "
            f"at least {floor} each; choose a budget in [{floor * len(widths)}, {sum(widths)}]."
        )
    ranked = []
    for k, s in enumerate(scores):
        s = s.detach().double().flatten()
        order = torch.argsort(s, descending=True, stable=True)
        boosted = s[order].clone()
        boosted[:floor] = float("inf")  # the floor is kept whatever it scores
        ranked.append(torch.stack([boosted, torch.full_like(boosted, k)], dim=1))
    table = torch.cat(ranked)
    # sort by score, descending; stable so equal scores keep block order
    chosen = torch.argsort(table[:, 0], descending=True, stable=True)[:budget]
    counts = torch.bincount(table[chosen, 1].long(), minlength=len(widths))
    return counts.tolist()


def flat_budget(widths: Sequence[int], fraction: float) -> int:
    """The budget a flat cut at `fraction` keeps: sum_k round(fraction * width_k)."""
    return sum(max(1, round(fraction * w)) for w in widths)


@torch.no_grad()
def replacement_kl(
    adapter: BlockAdapter,
    states: Sequence[Tensor],
    block: int,
    surrogate: Surrogate,
    batch_size: int = 8,
) -> float:
    """s_k: mean over next-token positions of KL(teacher || model with only block k replaced).

    states: the teacher trajectory [h_0, ..., h_L] of the calibration prompts, `[n, s, d]` each;
    the replaced model runs g_k on h_k, then the teacher's blocks k+1..L-1 and head.
    """
    total, count = 0.0, 0
    for start in range(0, len(states[0]), batch_size):
        rows = slice(start, start + batch_size)
        h = run_graph(surrogate.graph, surrogate.weights, states[block][rows].float())
        for j in range(block + 1, adapter.num_blocks):
            h = adapter.block(j, h).float()
        teacher = torch.log_softmax(adapter.head(states[-1][rows]).double()[:, :-1], -1)
        replaced = torch.log_softmax(adapter.head(h).double()[:, :-1], -1)
        total += float((teacher.exp() * (teacher - replaced)).sum())
        count += teacher.shape[0] * teacher.shape[1]
    return total / count


def sensitivity_scores(
    neuron_importance: Sequence[Tensor],
    block_kl: Sequence[float],
    fraction: float,
) -> list[Tensor]:
    """Scores w_k * imp_k(n), w_k = s_k / (importance the flat cut at `fraction` removes).

    A block whose flat cut removes no importance (or costs nothing) scores by importance
    alone, scaled by a tiny weight, so it gives neurons away first.
    """
    scores = []
    for imp, s_k in zip(neuron_importance, block_kl, strict=True):
        imp = imp.detach().double()
        kept = max(1, round(fraction * len(imp)))
        removed = imp.sort(descending=True).values[kept:].sum()
        weight = max(s_k, 0.0) / float(removed) if float(removed) > 0 else 0.0
        scores.append(imp * max(weight, 1e-30))
    return scores


def allocate_by_sensitivity(
    adapter: BlockAdapter,
    states: Sequence[Tensor],
    flat_cut: Callable[[int], Surrogate],
    neuron_importance: Sequence[Tensor],
    fraction: float,
    floor_fraction: float = 0.25,
    batch_size: int = 8,
) -> tuple[list[int], list[float]]:
    """(n_k per block, s_k per block) for a budget of `fraction` of all MLP neurons.

    flat_cut(k): block k's surrogate at the flat `fraction` (e.g. importance cut + LS refit);
    neuron_importance[k]: imp_k [width_k] on teacher inputs; states: calibration trajectory.
    No block keeps fewer than `floor_fraction` of its neurons.
    """
    block_kl = [
        replacement_kl(adapter, states, k, flat_cut(k), batch_size)
        for k in range(adapter.num_blocks)
    ]
    widths = [len(imp) for imp in neuron_importance]
    budget = flat_budget(widths, fraction)
    floor = max(1, round(floor_fraction * min(widths)))
    scores = sensitivity_scores(neuron_importance, block_kl, fraction)
    return allocate(scores, budget, floor), block_kl
