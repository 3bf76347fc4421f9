"""Per-block Lipschitz constants on the composed tube, and the global bound.

B_0 = 0, B_k = L_k * B_{k-1} + eps_k, where L_k is a Lipschitz constant of g_k on the tube of
radius B_{k-1} around the teacher inputs h_{k-1}. Two chains are built side by side: one from
sound constants (None from the first block whose tube reaches a norm singularity) and one from
empirical constants (always finite, labelled empirical). Exact rationals, every float rounded up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import torch

from blockcert.cert.lipschitz import empirical_lipschitz, sound_lipschitz
from blockcert.compose.rational import round_up
from blockcert.surrogate.ir import Surrogate


@dataclass
class BlockLink:
    block: int
    certified: bool
    eps: Fraction
    lipschitz_sound: Fraction | None
    lipschitz_empirical: Fraction
    bound_sound: Fraction | None  # B_k of the sound chain
    bound_empirical: Fraction
    parts: dict = field(default_factory=dict)


@dataclass
class Chain:
    links: list[BlockLink]

    @property
    def sound(self) -> bool:
        return all(link.bound_sound is not None for link in self.links)

    @property
    def final_sound(self) -> Fraction | None:
        return self.links[-1].bound_sound if self.links else Fraction(0)

    @property
    def final_empirical(self) -> Fraction:
        return self.links[-1].bound_empirical if self.links else Fraction(0)

    def lists(self, kind: str) -> tuple[list[Fraction], list[Fraction]]:
        """(eps list, L list) of the `sound` or `empirical` chain, for Lean."""
        eps = [link.eps for link in self.links]
        if kind == "sound":
            return eps, [link.lipschitz_sound for link in self.links]
        return eps, [link.lipschitz_empirical for link in self.links]


def _batches(states: torch.Tensor, batch_size: int):
    for start in range(0, len(states), batch_size):
        yield states[start : start + batch_size]


def compose_chain(
    blocks: list[tuple[int, Surrogate, bool, float]],
    inputs: list[torch.Tensor],
    batch_size: int,
    empirical_prompts: int,
    random_trials: int,
    ascent_steps: int,
    min_radius: float,
) -> Chain:
    """blocks: (index, g_k, certified, eps_k) in order; inputs[i]: teacher inputs of blocks[i]."""
    links: list[BlockLink] = []
    bound_sound: Fraction | None = Fraction(0)
    bound_empirical = Fraction(0)
    for (k, surrogate, certified, eps), x in zip(blocks, inputs, strict=True):
        eps_q = round_up(eps)
        lip_sound = None
        if bound_sound is not None:
            sound = sound_lipschitz(surrogate, _batches(x, batch_size), float(bound_sound))
            lip_sound = None if sound.value is None else round_up(sound.value)
        radius = max(float(bound_empirical), min_radius)
        empirical = empirical_lipschitz(
            surrogate, x[:empirical_prompts], radius, random_trials, ascent_steps, seed=k
        )
        lip_empirical = round_up(empirical.value)
        # B_k = L_k * B_{k-1} + eps_k
        bound_sound = None if lip_sound is None else lip_sound * bound_sound + eps_q
        bound_empirical = lip_empirical * bound_empirical + eps_q
        links.append(
            BlockLink(k, certified, eps_q, lip_sound, lip_empirical, bound_sound, bound_empirical)
        )
    return Chain(links)
