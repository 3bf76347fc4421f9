"""The compression recipe: what `conf/compress/*.yaml` builds (`_target_`), as dataclasses.

budget       how much each block keeps (compress.budget.Budget)
allocation   how a global MLP-neuron budget is spread over blocks (compress.allocation)
pruning      how each block is cut and compensated (compress.cut.Pruning)
calibration  the streamed calibration walk over the training split (compress.walk)
e2e          the end-to-end KL pass over the surrogates together (lit.joint)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from blockcert.compress.allocation import Allocation
from blockcert.compress.budget import Budget
from blockcert.compress.cut import Pruning
from blockcert.compress.walk import INPUTS
from blockcert.errors import BlockCertError


@dataclass(frozen=True)
class Calibration:
    """The walk's data: the first `prompts` training prompts (null: the whole training split),
    `inputs` teacher | stitched | mixed (stitched_weight: the stitched share when mixed),
    `batch_size` prompts per batch; refit_attention: also refit the attention output
    projection by least squares when no head is cut (heads cut: always)."""

    inputs: str = "stitched"
    stitched_weight: float = 0.5
    prompts: int | None = None
    batch_size: int = 16
    refit_attention: bool = False

    def __post_init__(self):
        if self.inputs not in INPUTS or not 0.0 <= self.stitched_weight <= 1.0:
            raise BlockCertError(
                f"compress.calibration.inputs={self.inputs!r} must be one of {', '.join(INPUTS)} "
                "and stitched_weight lie in [0, 1]."
            )


@dataclass(frozen=True)
class EndToEnd:
    """KL(teacher || stitched) + block_weight x the per-block loss on teacher inputs
    (lit/joint.py), over the first `prompts` training prompts; prompts = 0: no such pass."""

    prompts: int = 256
    batch_size: int = 4
    epochs: int = 1
    lr: float = 2.0e-5
    block_weight: float = 1.0


@dataclass(frozen=True)
class Recipe:
    budget: Budget = field(default_factory=Budget)
    allocation: Allocation = field(default_factory=Allocation)
    pruning: Pruning = field(default_factory=Pruning)
    calibration: Calibration = field(default_factory=Calibration)
    e2e: EndToEnd = field(default_factory=EndToEnd)

    def __post_init__(self):
        # Hydra hands the sections over as plain mappings
        for name, kind in SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, kind):
                object.__setattr__(self, name, kind(**(value or {})))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def bias_params(self) -> int:
        """d_model per block when the down projection gains a bias (LS with bias, FLAP's mean
        compensation), as a multiplier: 1 or 0."""
        p = self.pruning
        return int(p.update == "mean" or (p.update == "ls" and p.bias))


SECTIONS = {
    "budget": Budget,
    "allocation": Allocation,
    "pruning": Pruning,
    "calibration": Calibration,
    "e2e": EndToEnd,
}
