"""Shared tools of the transcoder tests (plain, skip and gated families on tiny_llama)."""

from __future__ import annotations

import copy

import torch

from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Surrogate


def block_pairs(adapter, block: int):
    """(ids [8, 24], teacher block inputs, outputs) of seeded random prompts."""
    ids = torch.randint(0, 256, (8, 24), generator=torch.Generator().manual_seed(1))
    x, y = adapter.block_pair(ids, block)
    return ids, x, y


def forged(surrogate: Surrogate, edit) -> Surrogate:
    """A copy of `surrogate` after `edit(graph, weights)` changed its graph or weights."""
    graph = copy.deepcopy(surrogate.graph)
    weights = dict(surrogate.weights)
    edit(graph, weights)
    return Surrogate(graph, weights)


def all_latents(surrogate: Surrogate) -> Surrogate:
    """k = width: no top-k swap can happen, so a finite sound constant exists."""
    graph = copy.deepcopy(surrogate.graph)
    graph.node("hidden").attrs["k"] = graph.capacity["k"] = graph.capacity["transcoder_width"]
    return Surrogate(graph, surrogate.weights)


def worst_ratio(surrogate: Surrogate, x, radius: float, trials: int = 32) -> float:
    """The largest ||g(x + delta) - g(x)|| / radius over random perturbations of norm radius."""
    base = run_graph(surrogate.graph, surrogate.weights, x)
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(trials):
        delta = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        delta = delta / delta.norm(dim=-1, keepdim=True).amax() * radius
        moved = run_graph(surrogate.graph, surrogate.weights, (x.double() + delta).float())
        worst = max(worst, float((moved - base).double().norm(dim=-1).amax()) / radius)
    return worst


def mlp_fvu(surrogate: Surrogate, full: Surrogate, x) -> float:
    """FVU of the surrogate's MLP output against the teacher block `full`'s on inputs x."""
    _, mine = run_graph(surrogate.graph, surrogate.weights, x, keep=("mlp_out",))
    _, ref = run_graph(full.graph, full.weights, x, keep=("mlp_out",))
    target = ref["mlp_out"]
    residual = (mine["mlp_out"] - target).pow(2).sum()
    return float(residual / (target - target.mean((0, 1))).pow(2).sum())
