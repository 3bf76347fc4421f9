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
"""

from __future__ import annotations

from collections.abc import Iterable

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
