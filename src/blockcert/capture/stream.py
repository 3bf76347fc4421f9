"""Stream (input, output) residual pairs of block k out of the teacher, batch by batch.

Only blocks 0..k run; nothing is kept after a batch is yielded, so memory does not grow with
the number of tokens.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset

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


class ResidualPairStream(IterableDataset):
    """Yields `(x_in, x_out)`, each `[batch, seq, d_model]` fp32, for block `block`."""

    def __init__(self, adapter: BlockAdapter, block: int, token_ids: torch.Tensor, batch_size: int):
        if not 0 <= block < adapter.num_blocks:
            raise BlockCertError(
                f"block={block} is out of range: the model has blocks 0..{adapter.num_blocks - 1}."
            )
        self.adapter, self.block, self.token_ids, self.batch_size = (
            adapter,
            block,
            token_ids,
            batch_size,
        )

    def __len__(self) -> int:
        return -(-len(self.token_ids) // self.batch_size)

    def __iter__(self) -> Iterator[Pair]:
        device = next(self.adapter.teacher.model.parameters()).device
        for start in range(0, len(self.token_ids), self.batch_size):
            ids = self.token_ids[start : start + self.batch_size].to(device)
            x_in, x_out = self.adapter.block_pair(ids, self.block)
            x_in, x_out = x_in.float().cpu(), x_out.float().cpu()
            check_finite(x_in, x_out, self.block)
            yield x_in, x_out
