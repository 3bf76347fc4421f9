"""Keys of a block's MLP memory and their second moment.

ROME (Meng et al. 2022, §3.1) reads the MLP's down projection W_out as a linear associative
memory: key k = the MLP hidden activation (the input of W_out; for SwiGLU
k = silu(W_gate n) * (W_up n), n = RMSNorm(resid_attn)), value W_out k. Unrelated keys are
protected through their uncentred second moment C = E[k k^T] over many tokens (ROME eq. 2,
MEMIT §4.2: "C = K0 K0^T" estimated from text), here over every token of the training prompts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from blockcert.errors import BlockCertError
from blockcert.progress import progress
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Graph, Surrogate


@dataclass(frozen=True)
class DownProjection:
    """Typed view of the edited node: its weight key `[d_model, m]` and its input (the key)."""

    node: str
    weight: str
    key: str

    @classmethod
    def of(cls, graph: Graph) -> DownProjection:
        try:
            node = graph.node("mlp_out")
        except KeyError:
            node = None
        if node is None or node.op != "linear":
            raise BlockCertError(
                "the block's MLP down projection is not a plain linear node; edits need the "
                "full-capacity teacher block."
            )
        return cls("mlp_out", node.weights["weight"], node.inputs[0])


def block_with_keys(surrogate: Surrogate, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(block output `[b, s, d]`, keys `[b, s, m]`) for block inputs x `[b, s, d]`."""
    down = DownProjection.of(surrogate.graph)
    out, values = run_graph(surrogate.graph, surrogate.weights, x, keep=(down.key,))
    return out, values[down.key]


@torch.no_grad()
def key_second_moment(surrogate: Surrogate, inputs: Iterable[torch.Tensor]) -> torch.Tensor:
    """C = (1/N) sum_t k_t k_t^T over every token of every input batch; `[m, m]` float64."""
    total, count = None, 0
    for x in progress(inputs, None, "key covariance", "batches"):
        _, keys = block_with_keys(surrogate, x)
        k = keys.reshape(-1, keys.shape[-1]).double()
        total = k.T @ k if total is None else total + k.T @ k
        count += len(k)
    if total is None or count == 0:
        raise BlockCertError("no training tokens to estimate the key covariance from.")
    return total / count
