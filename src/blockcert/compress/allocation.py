"""Spreading a global budget of MLP neurons over blocks.

  flat          every block keeps round(fraction * width) neurons;
  sensitivity   measured sensitivity (`blockcert.surrogate.allocate`): block k's flat cut,
                alone in the teacher, raises KL(teacher || model) by s_k on calibration
                prompts; the budget goes to the neurons of largest s_k-weighted importance;
  standardized  FLAP's adaptive structure: each block's scores standardised, the largest kept
                model-wide (`compress.scores.standardized_widths`).
The flat cuts and scores come from a walk over the allocation prompts on teacher inputs, cut by
the recipe's own `Pruning` (so s_k is the cost of the cut the recipe will make).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import torch

from blockcert.compress.cut import Pruning, cut_heads, cut_neurons, neuron_scores
from blockcert.compress.scores import standardized_widths
from blockcert.compress.walk import BlockCalibration, walk
from blockcert.errors import BlockCertError
from blockcert.evaluate.trajectory import teacher_trajectory
from blockcert.models.adapters import BlockAdapter
from blockcert.surrogate.allocate import allocate, replacement_kl, sensitivity_scores

log = logging.getLogger(__name__)
KINDS = ("flat", "sensitivity", "standardized")


@dataclass(frozen=True)
class Allocation:
    """How the neuron budget is spread (see the module docstring). prompts: training prompts
    the flat cuts and scores are measured on; kl_prompts: the first N of them, on which s_k is
    measured; floor_fraction: no block keeps fewer than this fraction of its neurons."""

    kind: str = "sensitivity"
    prompts: int = 128
    kl_prompts: int = 16
    floor_fraction: float = 0.25

    def __post_init__(self):
        if self.kind not in KINDS:
            raise BlockCertError(
                f"compress.allocation.kind={self.kind!r} is not one of {', '.join(KINDS)}."
            )
        if not 1 <= self.kl_prompts <= self.prompts or not 0 < self.floor_fraction <= 1:
            raise BlockCertError(
                "compress.allocation needs 1 <= kl_prompts <= prompts and floor_fraction in (0, 1]."
            )


@dataclass
class Widths:
    """Kept query heads and MLP neurons per block, and what the allocation measured."""

    heads: dict[int, int]
    neurons: dict[int, int]
    block_kl: dict[int, float] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Widths:
        def ints(d):
            return None if d is None else {int(k): v for k, v in d.items()}

        return cls(
            ints(data["heads"]), ints(data["neurons"]), ints(data["block_kl"]), data["seconds"]
        )


def _measured_cuts(
    adapter: BlockAdapter,
    ids: torch.Tensor,
    flat: Widths,
    pruning: Pruning,
    select: str,
    batch_size: int,
):
    """Teacher-input walk: ({k: flat cut}, {k: neuron scores by `select`})."""
    cuts, scores = {}, {}
    blocks = sorted(flat.neurons)
    heads_of = {k: flat.heads[k] for k in blocks}

    def fit(cal: BlockCalibration):
        k, s1 = cal.block, cal.full
        if heads_of[k] < s1.graph.capacity["heads"]:
            s1 = cut_heads(s1, cal.attention(), heads_of[k], pruning)
        stats = cal.mlp(s1)
        scores[k] = neuron_scores(s1, stats, select)
        cuts[k] = cut_neurons(s1, stats, flat.neurons[k], pruning)
        return cuts[k]

    walk(adapter, ids, blocks, fit, inputs="teacher", batch_size=batch_size)
    return cuts, scores


def allocate_widths(
    adapter: BlockAdapter,
    train_ids: torch.Tensor,
    flat: Widths,
    allocation: Allocation,
    pruning: Pruning,
    batch_size: int,
) -> Widths:
    """Widths for the same total as `flat` (the flat cut of the budget), spread by `kind`."""
    if allocation.kind == "flat":
        return flat
    start = time.perf_counter()
    blocks = sorted(flat.neurons)
    budget = sum(flat.neurons.values())
    ids = train_ids[: allocation.prompts]
    select = "fluctuation" if allocation.kind == "standardized" else "importance"
    cuts, scores = _measured_cuts(adapter, ids, flat, pruning, select, batch_size)
    full_widths = [len(scores[k]) for k in blocks]
    floor = max(1, round(allocation.floor_fraction * min(full_widths)))
    floor = min(floor, min(flat.neurons.values()))
    block_kl = None
    if allocation.kind == "standardized":
        counts = standardized_widths([scores[k] for k in blocks], budget, floor)
    else:
        states = teacher_trajectory(adapter, ids[: allocation.kl_prompts], batch_size)
        block_kl = {}
        for k in blocks:
            block_kl[k] = replacement_kl(adapter, states, k, cuts[k], batch_size)
            log.info("allocation: block %d alone costs KL %.5f nats", k, block_kl[k])
        fraction = budget / sum(full_widths)
        weighted = sensitivity_scores(
            [scores[k] for k in blocks], [block_kl[k] for k in blocks], fraction
        )
        counts = allocate(weighted, budget, floor)
    widths = Widths(dict(flat.heads), dict(zip(blocks, counts, strict=True)), block_kl)
    widths.seconds = time.perf_counter() - start
    log.info("allocation (%s, %.0f s): neurons %s", allocation.kind, widths.seconds, counts)
    return widths
