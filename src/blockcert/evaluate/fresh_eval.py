"""Per-prompt figures of the stitched model on fresh prompts, streamed batch by batch.

For each prompt p (the prompt is the i.i.d. unit), against the teacher (all float32 states,
KL and log-likelihoods in float64):

    final deviation      max_t ||h~_L(p)_t - h_L(p)_t||           (residual stream, last block)
    mean KL (nats)       mean_t KL(teacher_t || stitched_t)        (next-token distributions)
    max KL (nats)        max_t KL(teacher_t || stitched_t)
    top-1 disagreement   fraction of positions whose argmax differs
    |delta NLL| (nats)   |mean_t NLL_stitched - mean_t NLL_teacher|  (log of the ppl ratio)

over the positions that have a next token. Only one batch's states are held at a time, so
hundreds of prompts cost memory of one. Blocks listed as `identical` (the teacher's own block
in the surrogate IR, bit-identical on every re-derived prompt) are not run again while the
stitched state is the teacher's, as in certify's stitched run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from blockcert.evaluate.trajectory import length_batches, stitched_batch, teacher_states
from blockcert.models.adapters import BlockAdapter
from blockcert.progress import progress
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Surrogate

METRICS = (
    "final deviation",
    "mean KL (nats)",
    "max KL (nats)",
    "top-1 disagreement",
    "|delta NLL| (nats)",
)


@dataclass
class FreshMetrics:
    """values[metric]: `[n_prompts]` float64; block_eps[k]: eps_k on teacher inputs of the
    first `len(block_eps[k])` prompts (the verifier's own split)."""

    values: dict[str, torch.Tensor]
    block_eps: dict[int, torch.Tensor]
    n_tokens: int

    @classmethod
    def zeros(cls, n: int, blocks: Sequence[int], eps_rows: int, n_tokens: int) -> FreshMetrics:
        return cls(
            {name: torch.zeros(n, dtype=torch.float64) for name in METRICS},
            {k: torch.zeros(min(eps_rows, n), dtype=torch.float64) for k in blocks},
            n_tokens,
        )


@torch.no_grad()
def evaluate_fresh(
    adapter: BlockAdapter,
    surrogates: Mapping[int, Surrogate],
    identical: set[int],
    prompts: Sequence[torch.Tensor],
    batch_size: int,
    eps_rows: int = 0,
    what: str = "fresh prompts",
) -> FreshMetrics:
    """The figures above for every prompt (ragged; batched by length), and eps_k per certified
    block on teacher inputs for the first `eps_rows` prompts."""
    n = len(prompts)
    out = FreshMetrics.zeros(n, list(surrogates), eps_rows, sum(len(p) for p in prompts))
    batches = length_batches([len(p) for p in prompts], batch_size)
    exact = {k: True for k in identical}
    for rows in progress(batches, len(batches), what, "batches"):
        ids = torch.stack([prompts[i] for i in rows])
        states = teacher_states(adapter, ids)
        figures = stitched_batch(adapter, surrogates, ids, states, exact)
        index = torch.tensor(rows)
        targets = max(figures.n_targets, 1)  # a one-token prompt has no next token
        out.values["final deviation"][index] = figures.final_gap.amax(-1).double()
        out.values["mean KL (nats)"][index] = figures.kl / targets
        out.values["max KL (nats)"][index] = figures.kl_max
        out.values["top-1 disagreement"][index] = 1.0 - figures.agree / targets
        delta_nll = (figures.nll_stitched - figures.nll_baseline) / targets
        out.values["|delta NLL| (nats)"][index] = delta_nll.abs()
        own = [j for j, i in enumerate(rows) if i < eps_rows]
        for k, g in surrogates.items():
            if own and k not in identical:  # identical blocks: exactly 0 on teacher inputs
                x, y = states[k][own], states[k + 1][own]
                err = (run_graph(g.graph, g.weights, x) - y).norm(dim=-1).amax(dim=-1)
                out.block_eps[k][torch.tensor([rows[j] for j in own])] = err.double()
    return out
