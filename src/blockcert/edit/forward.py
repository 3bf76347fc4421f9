"""The teacher around one block: its input h_k, and the rest of the model after it.

h_0 = embed(ids), h_{j+1} = f_j(h_j); logits = head(h_L). Editing block k changes only
h_{k+1} = g_k(h_k), so the prefix 0..k-1 runs once and every variant of the edit is scored by
running blocks k+1..L-1 and the head on g_k(h_k).
"""

from __future__ import annotations

import torch

from blockcert.models.adapters import BlockAdapter


@torch.no_grad()
def block_input(adapter: BlockAdapter, ids: torch.Tensor, k: int) -> torch.Tensor:
    """h_k `[b, s, d]` fp32 (blocks 0..k-1 of the teacher)."""
    h = adapter.embed(ids)
    for j in range(k):
        h = adapter.block(j, h)
    return h.float()


def tail_logits(adapter: BlockAdapter, h: torch.Tensor, start: int) -> torch.Tensor:
    """logits `[b, s, V]` from h_start: blocks start..L-1 and the head (differentiable)."""
    for j in range(start, adapter.num_blocks):
        h = adapter.block(j, h)
    return adapter.head(h).float()
