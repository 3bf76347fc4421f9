"""Per-neuron scores of the structured-pruning literature, from streamed calibration statistics.

For an MLP with down projection W [d, m] reading hidden units h_t [m], and input projections
(gate, up) reading the normalised input w_t [d]:

- importance (this repository's default cut): E_t[h_j^2] * ||W_:,j||^2, the mean squared
  contribution of neuron j to the block output.
- Wanda-sp (the structured Wanda variant of An et al., FLAP, AAAI 2024): the sum over the
  neuron's weights of |weight| * ||its input over tokens||_2: for the down column
  ||h_j|| * sum_i |W_ij|, for the gate and up rows sum_k |W_jk| ||w_k||.
- FLAP fluctuation (An et al. 2024): Var_t[h_j] * ||W_:,j||^2, the variance a neuron's removal
  leaves, which a bias b = W_:,S E[h_S] then compensates in mean. FLAP spreads the budget over
  blocks by standardising each block's scores, (f - mean f) / std f, and keeping the largest
  standardised scores model-wide (`standardized_widths`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from blockcert.compress.lstsq import NormalEquations
from blockcert.surrogate.allocate import allocate
from blockcert.surrogate.view import BlockView

Tensor = torch.Tensor


def importance(view: BlockView, hidden: NormalEquations) -> Tensor:
    """E[h_j^2] ||W_:,j||^2 per neuron [m] (capacity.importance's neuron score)."""
    return hidden.mean_square * view.mlp.down.matrix().pow(2).sum(0)


def fluctuation(view: BlockView, hidden: NormalEquations) -> Tensor:
    """FLAP's fluctuation Var[h_j] ||W_:,j||^2 per neuron [m]."""
    return hidden.variance * view.mlp.down.matrix().pow(2).sum(0)


def wanda_sp(view: BlockView, hidden: NormalEquations, input_sq: Tensor) -> Tensor:
    """Wanda-sp per neuron [m]; input_sq [d]: sum over tokens of w_k^2 (the MLP's normed input)."""
    down = view.mlp.down.matrix().abs()
    score = hidden.mean_square.sqrt() * down.sum(0)
    in_norm = (input_sq / max(hidden.count, 1e-12)).sqrt()
    for projection in view.mlp.inputs:
        score = score + projection.matrix().abs() @ in_norm
    return score


def standardized_widths(scores: Sequence[Tensor], budget: int, floor: int = 1) -> list[int]:
    """FLAP's adaptive structure: widths keeping the `budget` largest standardised scores."""
    standard = []
    for s in scores:
        s = s.double()
        standard.append((s - s.mean()) / s.std().clamp_min(1e-30))
    return allocate(standard, budget, floor)
