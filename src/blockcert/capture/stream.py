"""Stream (input, output) residual pairs of one or many blocks out of the teacher, batch by batch.

For a batch of prompts: h_0 = embed(ids), h_{j+1} = block_j(h_j) for j = 0..max(blocks); the
pair (h_k, h_{k+1}) of every requested k is yielded as soon as it exists. Blocks after the last
requested one never run, and nothing is kept once a pair is yielded, so memory holds one batch
of activations whatever the number of blocks or tokens. Every capture (one block or all of
them) runs this one loop, so the pairs of block k are bitwise the same either way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import IterableDataset

from blockcert.capture.blocks import check_block
from blockcert.errors import BlockCertError
from blockcert.models.adapters import BlockAdapter

Pair = tuple[torch.Tensor, torch.Tensor]


def check_finite(x_in: torch.Tensor, x_out: torch.Tensor, block: int) -> None:
    for name, tensor in (("input", x_in), ("output", x_out)):
        if not torch.isfinite(tensor).all():
            raise BlockCertError(
                f"block {block} {name} activations contain NaN/Inf; check the model weights and "
                "dtype (model.dtype=float32)."
            )


@torch.no_grad()
def teacher_pass(
    adapter: BlockAdapter, token_ids: torch.Tensor, batch_size: int, blocks: Sequence[int]
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Yield `(batch index, k, x_in, x_out)` for every batch and requested block k, in order.

    x_in, x_out: `[batch, seq, d_model]` fp32 on the CPU (h_k and h_{k+1}).
    """
    wanted = {check_block(k, adapter.num_blocks) for k in blocks}
    device = next(adapter.teacher.model.parameters()).device
    for index, start in enumerate(range(0, len(token_ids), batch_size)):
        h = adapter.embed(token_ids[start : start + batch_size].to(device))
        for k in range(max(wanted) + 1):
            h_next = adapter.block(k, h)
            if k in wanted:
                x_in, x_out = h.float().cpu(), h_next.float().cpu()
                check_finite(x_in, x_out, k)
                yield index, k, x_in, x_out
            h = h_next


class ResidualPairStream(IterableDataset):
    """Yields `(x_in, x_out)`, each `[batch, seq, d_model]` fp32, for block `block`."""

    def __init__(self, adapter: BlockAdapter, block: int, token_ids: torch.Tensor, batch_size: int):
        check_block(block, adapter.num_blocks)
        self.adapter, self.block, self.token_ids, self.batch_size = (
            adapter,
            block,
            token_ids,
            batch_size,
        )

    def __len__(self) -> int:
        return -(-len(self.token_ids) // self.batch_size)

    def __iter__(self) -> Iterator[Pair]:
        for _, _, x_in, x_out in teacher_pass(
            self.adapter, self.token_ids, self.batch_size, [self.block]
        ):
            yield x_in, x_out
