"""The floating-point side, measured: fp32 evaluation of the IR vs a float64 evaluation.

The composition theorem is about exact arithmetic of the surrogate IR; the stitched model runs it
in fp32. With g the exact block and g~ its fp32 evaluation, at the teacher input h (the tube
centre) and at the stitched input s (the other end of the tube):

    d(g~(s), f(h)) <= d(g~(s), g(s)) + d(g(s), g(h)) + d(g(h), f(h))
    d(g(h), f(h))  <= d(g~(h), f(h)) + d(g~(h), g(h))      (eps_k is measured with g~)

so an fp32 run stays within the exact-arithmetic bound once each eps_k is increased by
fp(h) + fp(s), fp(X) = max_t ||g~(X)_t - g64(X)_t||. The float64 run g64 stands in for exact
arithmetic (its own error is ~1e-16 relative, far below fp32's ~1e-7). This is a MEASUREMENT on
the evaluated prompts, not a proof: report it beside the bound ("sound in exact arithmetic;
measured fp32 allowance ..."), never fold it in silently.

Of a composed chain (`chain_allowance`), at both ends of every block's tube: composing
eps_k + fp(h_k) + fp(s_k) instead of eps_k keeps the fp32 stitched model under the bound on the
evaluated prompts. Derivation: docs/soundness.md#floating-point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from blockcert.cert.lipschitz import forward64
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Surrogate
from blockcert.surrogate.view import block_view


@torch.no_grad()
def fp_error(surrogate: Surrogate, inputs: Iterable[torch.Tensor]) -> float:
    """max over prompts and tokens of ||g_fp32(X)_t - g_float64(X)_t|| at the given inputs."""
    view = block_view(surrogate)
    weights = {k: v.float() for k, v in surrogate.weights.items()}
    worst = 0.0
    for batch in inputs:
        batch = batch.reshape(-1, *batch.shape[-2:])
        out32 = run_graph(surrogate.graph, weights, batch.float())
        for x, y32 in zip(batch, out32, strict=True):
            y64 = forward64(view, x.double())["out"]
            worst = max(worst, float((y32.double() - y64).norm(dim=-1).max()))
    return worst


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
