"""Teacher and stitched residual trajectories on evaluated prompts.

Teacher: h_0 = embed(tokens), h_k = f_k(h_{k-1}). Stitched: h~_0 = h_0, h~_k = g_k(h~_{k-1}) with
g_k the surrogate where one is given and the teacher block elsewhere. The deviation per block is
e_k = max over prompts and positions of ||h~_k - h_k||_2 (fp32).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from blockcert.models.adapters import BlockAdapter
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Surrogate


@torch.no_grad()
def teacher_trajectory(
    adapter: BlockAdapter, input_ids: torch.Tensor, batch_size: int
) -> list[torch.Tensor]:
    """[h_0, ..., h_L], each `[n_prompts, seq, d_model]` fp32 on CPU."""
    states: list[list[torch.Tensor]] = [[] for _ in range(adapter.num_blocks + 1)]
    for start in range(0, len(input_ids), batch_size):
        h = adapter.embed(input_ids[start : start + batch_size])
        states[0].append(h.float().cpu())
        for k in range(adapter.num_blocks):
            h = adapter.block(k, h)
            states[k + 1].append(h.float().cpu())
    return [torch.cat(s) for s in states]


@dataclass
class StitchedResult:
    block_deviation: list[float]  # e_k for k = 1..L (after block k-1, 0-based)
    final_token_deviation: torch.Tensor  # ||h~_L - h_L|| per token, flattened
    ppl_baseline: float
    ppl_stitched: float
    kl_mean: float  # mean over positions of KL(baseline || stitched), nats
    top1_agreement: float
    n_tokens: int

    @property
    def ppl_delta(self) -> float:
        return self.ppl_stitched - self.ppl_baseline


def _next_token_stats(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs [b, s-1, V], targets [b, s-1]) for next-token prediction."""
    return F.log_softmax(logits[:, :-1].double(), dim=-1), ids[:, 1:]


@torch.no_grad()
def stitched_evaluation(
    adapter: BlockAdapter,
    surrogates: Mapping[int, Surrogate],
    input_ids: torch.Tensor,
    teacher_states: list[torch.Tensor],
    batch_size: int,
) -> StitchedResult:
    """Run the stitched model and compare it with the teacher trajectory and logits."""
    n_blocks = adapter.num_blocks
    deviation = torch.zeros(n_blocks, dtype=torch.float64)
    final, nll_base, nll_stitched, kl, agree, count = [], 0.0, 0.0, 0.0, 0, 0
    for start in range(0, len(input_ids), batch_size):
        rows = slice(start, start + batch_size)
        ids = input_ids[rows]
        h = teacher_states[0][rows]
        for k in range(n_blocks):
            if k in surrogates:
                h = run_graph(surrogates[k].graph, surrogates[k].weights, h)
            else:
                h = adapter.block(k, h).float()
            gap = (h - teacher_states[k + 1][rows]).norm(dim=-1)
            deviation[k] = max(deviation[k], float(gap.max()))
        final.append(gap.flatten())
        base_lp, targets = _next_token_stats(adapter.head(teacher_states[-1][rows]), ids)
        stitched_lp, _ = _next_token_stats(adapter.head(h), ids)
        nll_base -= float(base_lp.gather(-1, targets[..., None]).sum())
        nll_stitched -= float(stitched_lp.gather(-1, targets[..., None]).sum())
        kl += float((base_lp.exp() * (base_lp - stitched_lp)).sum())
        agree += int((base_lp.argmax(-1) == stitched_lp.argmax(-1)).sum())
        count += targets.numel()
    return StitchedResult(
        block_deviation=deviation.tolist(),
        final_token_deviation=torch.cat(final),
        ppl_baseline=float(torch.tensor(nll_base / count).exp()),
        ppl_stitched=float(torch.tensor(nll_stitched / count).exp()),
        kl_mean=kl / count,
        top1_agreement=agree / count,
        n_tokens=count,
    )
