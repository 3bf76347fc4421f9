"""The measured fp32 allowance of a composed chain, at both ends of every block's tube.

The bound B_k is proven for exact arithmetic of the IR; the stitched model runs in fp32. For
block k with exact map g_k and fp32 evaluation g~_k, teacher input h and stitched input s:
    fp(h_k) = max_t ||g~_k(h)_t - g64_k(h)_t||,   fp(s_k) = max_t ||g~_k(s)_t - g64_k(s)_t||
(float64 standing in for exact arithmetic; blockcert.cert.fp_allowance). Composing
eps_k + fp(h_k) + fp(s_k) instead of eps_k keeps the fp32 stitched model under the bound on
these prompts. It is a MEASUREMENT on the evaluated prompts, reported beside the bound.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from blockcert.cert.fp_allowance import fp_error
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Surrogate


@dataclass(frozen=True)
class Allowance:
    centre: float  # fp(h_k), at the teacher inputs
    stitched: float  # fp(s_k), at the stitched model's inputs

    @property
    def total(self) -> float:
        return self.centre + self.stitched


@torch.no_grad()
def chain_allowance(
    chain: Sequence[tuple[int, Surrogate]], teacher_batches: Callable[[int], list[torch.Tensor]]
) -> dict[int, Allowance]:
    """{k: Allowance} for every block of `chain` ((k, g_k) in order, g_k the block it runs).

    teacher_batches(k): the teacher's inputs of block k as batches `[b, s, d]`; the stitched
    inputs are those of the first block pushed through g_k in fp32, as the stitched model does.
    Where they equal the teacher's exactly (surrogates that reproduce their block), fp(s_k) is
    fp(h_k): the same measurement on the same inputs, not repeated.
    """
    stitched = [batch.float() for batch in teacher_batches(chain[0][0])]
    allowances = {}
    for k, surrogate in chain:
        teacher = [batch.float() for batch in teacher_batches(k)]
        centre = fp_error(surrogate, teacher)
        same = all(torch.equal(a, b) for a, b in zip(teacher, stitched, strict=True))
        allowances[k] = Allowance(centre, centre if same else fp_error(surrogate, stitched))
        stitched = [run_graph(surrogate.graph, surrogate.weights, b) for b in stitched]
    return allowances
