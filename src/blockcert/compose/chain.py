"""Per-block constants on the composed tube, and the global bound.

B_0 = 0, B_k = min(L_k * B_{k-1}, B_{k-1} + a_k) + eps_k (blockcert.compose.bound), where L_k is a
Lipschitz constant of g_k on the tube of radius B_{k-1} around the teacher inputs h_{k-1} and a_k
its saturation constant (d(g(y), g(x)) <= d(y, x) + a_k for every y in that tube, finite at any
radius). Two
chains are built side by side:
- sound: L_k and a_k sound in exact arithmetic of the IR. Never unbounded: a block whose L_k does
  not exist on its tube (a norm with eps = 0 reaching 0) claims only a_k (L_k = None).
- empirical: L_k a gradient-ascent lower estimate (labelled empirical), with the same sound a_k;
  not computed (None) when empirical_prompts is 0, which leaves the sound chain unchanged.
Exact rationals, every float rounded up. The fp32 allowance of each eps_k is the caller's
(blockcert.cert.fp_allowance measures it at both ends of the tube).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from blockcert.cert.lipschitz import LipschitzOptions, empirical_lipschitz, sound_lipschitz
from blockcert.compose.bound import step_bound
from blockcert.compose.rational import round_up
from blockcert.progress import progress
from blockcert.surrogate.ir import Surrogate


@dataclass
class BlockLink:
    block: int
    certified: bool
    eps: Fraction
    lipschitz_sound: Fraction | None  # None: not claimed (saturation only)
    lipschitz_empirical: Fraction | None  # None: the empirical chain was not computed
    saturation: Fraction  # a_k, sound
    bound_sound: Fraction  # B_k of the sound chain (never None)
    bound_empirical: Fraction | None
    parts: dict = field(default_factory=dict)


@dataclass
class Chain:
    links: list[BlockLink]

    @property
    def sound(self) -> bool:
        """Always True now: the sound chain is never unbounded (kept for callers)."""
        return all(link.bound_sound is not None for link in self.links)

    @property
    def final_sound(self) -> Fraction:
        return self.links[-1].bound_sound if self.links else Fraction(0)

    @property
    def final_empirical(self) -> Fraction | None:
        return self.links[-1].bound_empirical if self.links else Fraction(0)

    def lists(self, kind: str) -> tuple[list[Fraction], list[Fraction | None]]:
        """(eps list, L list) of the `sound` or `empirical` chain (see `lean_lists`)."""
        eps, lips, _ = self.lean_lists(kind)
        return eps, lips

    def lean_lists(self, kind: str) -> tuple[list[Fraction], list[Fraction | None], list[Fraction]]:
        """(eps, L, a) of the `sound` or `empirical` chain, for `write_lean_instance(...,
        saturation=a)`; L entries may be None (not claimed)."""
        eps = [link.eps for link in self.links]
        sats = [link.saturation for link in self.links]
        if kind == "sound":
            return eps, [link.lipschitz_sound for link in self.links], sats
        return eps, [link.lipschitz_empirical for link in self.links], sats


def input_batches(states: torch.Tensor | Sequence[torch.Tensor], batch_size: int) -> list:
    """Batches [b, s, d] of one block's inputs: a tensor is cut, a list (ragged prompts) kept."""
    if isinstance(states, torch.Tensor):
        return [states[start : start + batch_size] for start in range(0, len(states), batch_size)]
    return list(states)


def radius_up(bound: Fraction) -> float:
    """The smallest float >= the exact rational bound (float() alone may round down)."""
    value = float(bound)
    return value if Fraction(value) >= bound else math.nextafter(value, math.inf)


def _probe(batches: list[torch.Tensor], n_prompts: int) -> torch.Tensor:
    """The first n_prompts prompts of the first batch, for the empirical ascent."""
    return batches[0][:n_prompts]


def compose_chain(
    blocks: list[tuple[int, Surrogate, bool, float]],
    inputs: list[torch.Tensor],
    batch_size: int,
    options: LipschitzOptions,
    min_radius: float,
) -> Chain:
    """blocks: (index, g_k, certified, eps_k) in order; inputs[i]: teacher inputs of blocks[i],
    one tensor [n, s, d] or a list of batches (prompts of different lengths). The sound L_k
    covers every given input (the caller cuts them to options.sound_prompts);
    options.empirical_prompts = 0: no empirical chain (its L_k and B_k are None)."""
    links: list[BlockLink] = []
    bound_sound = Fraction(0)
    bound_empirical = Fraction(0) if options.empirical_prompts > 0 else None
    steps = progress(zip(blocks, inputs, strict=True), len(blocks), "Lipschitz chain", "blocks")
    for (k, surrogate, certified, eps), x in steps:
        eps_q = round_up(eps)
        batches = input_batches(x, batch_size)
        # the tube must contain every point within B_{k-1}: round the float radius up
        tube = radius_up(bound_sound)
        # where the chain saturates (min picks B + a), the cheap first pass settles the step
        sound = sound_lipschitz(
            surrogate,
            batches,
            tube,
            options.tube_shells,
            options.refine_tokens,
            saturates_from=float(bound_sound),
            joint_tokens=options.joint_tokens,
        )
        lip_sound = None if sound.value is None else round_up(sound.value)
        saturation = round_up(sound.parts["saturation"])
        # B_k = min(L_k * B_{k-1}, B_{k-1} + a_k) + eps_k
        bound_sound = step_bound(bound_sound, eps_q, lip_sound, saturation)
        lip_empirical, empirical_method = None, "not computed (empirical_prompts = 0)"
        if bound_empirical is not None:
            empirical = empirical_lipschitz(
                surrogate,
                _probe(batches, options.empirical_prompts),
                max(float(bound_empirical), min_radius),
                seed=k,
                **options.search(),
            )
            lip_empirical, empirical_method = round_up(empirical.value), empirical.method
            bound_empirical = step_bound(bound_empirical, eps_q, lip_empirical, saturation)
        links.append(
            BlockLink(
                k,
                certified,
                eps_q,
                lip_sound,
                lip_empirical,
                saturation,
                bound_sound,
                bound_empirical,
                parts={"sound": sound.parts, "empirical_method": empirical_method},
            )
        )
    return Chain(links)
