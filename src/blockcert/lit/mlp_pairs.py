"""Token pairs of one block's MLP, streamed from its residual pairs: what a transcoder trains on.

A transcoder keeps the teacher's norms and attention, so the block error is the MLP's alone:
with y = x + attn(norm1(x)) (node `resid_attn`) and w = norm2(y) (node `mlp_norm`) computed by
the block's own frozen nodes, the MLP must output m = f(x) - y. For every training batch of
residual pairs (x_in, x_out) `[b, s, d]` the stream computes (w, m) per token `[b s, d]`, fills a
buffer of `buffer_tokens`, shuffles it at token level (tokens of one prompt are correlated) and
yields batches of `tokens_per_batch` (Lightning steps on them). One epoch is one pass over the
whole training split's pairs (read from the pair cache, a shard at a time), so the epoch holds
every training token exactly once whatever the capture's batch size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from blockcert.surrogate.interpret import run_values
from blockcert.surrogate.ir import Surrogate
from blockcert.surrogate.view import BlockView

Tensor = torch.Tensor
MLP_INPUT = "mlp_norm"  # the MLP's normed input w


@torch.no_grad()
def mlp_pairs(frozen: Surrogate, x_in: Tensor, x_out: Tensor) -> tuple[Tensor, Tensor]:
    """(w, m) `[tokens, d]`: the MLP's normed input and the output it must add, from block pairs
    `[b, s, d]` through the frozen nodes of `frozen` (norms and attention)."""
    values = run_values(frozen.graph, frozen.weights, x_in.float(), (MLP_INPUT, BlockView.MID))
    d = x_in.shape[-1]
    target = x_out.float() - values[BlockView.MID]
    return values[MLP_INPUT].reshape(-1, d), target.reshape(-1, d)


class MlpPairStream(IterableDataset):
    """Yields (w, m) token batches `[n, d]` from residual pair batches (see the module doc)."""

    def __init__(
        self,
        pairs: Iterable[tuple[Tensor, Tensor]],
        frozen: Surrogate,
        n_tokens: int,
        tokens_per_batch: int = 4096,
        buffer_tokens: int = 65536,
        seed: int = 0,
    ):
        self.pairs, self.frozen, self.n_tokens = pairs, frozen, n_tokens
        self.tokens_per_batch, self.buffer_tokens = tokens_per_batch, buffer_tokens
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return math.ceil(self.n_tokens / self.tokens_per_batch)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        ws, ms, held = [], [], 0
        for x_in, x_out in self.pairs:
            w, m = mlp_pairs(self.frozen, x_in, x_out)
            ws.append(w)
            ms.append(m)
            held += len(w)
            if held >= self.buffer_tokens:
                ws, ms = yield from self._drain(ws, ms, generator, keep_tail=True)
                held = sum(len(w) for w in ws)
        if ws:
            yield from self._drain(ws, ms, generator, keep_tail=False)

    def _drain(self, ws: list, ms: list, generator, keep_tail: bool):
        """Yield the buffer's full batches in a shuffled order; return the tail (a partial batch,
        kept for the next buffer unless this is the last)."""
        w, m = torch.cat(ws), torch.cat(ms)
        order = torch.randperm(len(w), generator=generator)
        w, m = w[order], m[order]
        size = self.tokens_per_batch
        full = len(w) // size * size if keep_tail else len(w)
        for start in range(0, full, size):
            yield w[start : start + size], m[start : start + size]
        return ([w[full:]], [m[full:]]) if full < len(w) else ([], [])


class MlpPairDataModule(L.LightningDataModule):
    """A residual pair datamodule (teacher or cascade) whose training batches become MLP token
    pairs (MlpPairStream); validation, the held-out pairs and every field a certificate reads
    stay the inner module's."""

    def __init__(
        self,
        inner: L.LightningDataModule,
        frozen: Surrogate,
        tokens_per_batch: int = 4096,
        buffer_tokens: int = 65536,
        seed: int = 0,
    ):
        super().__init__()
        self.inner, self.frozen, self.seed = inner, frozen, seed
        self.tokens_per_batch, self.buffer_tokens = tokens_per_batch, buffer_tokens
        self.adapter, self.block, self.prompts = inner.adapter, inner.block, inner.prompts

    @property
    def teacher(self):
        """The teacher whose block is certified (blockcert.models.teacher.Teacher)."""
        return self.adapter.teacher

    @property
    def pairs_source(self) -> dict[str, str]:
        return self.inner.pairs_source

    @property
    def n_train_tokens(self) -> int:
        return self.prompts.train.numel()

    def heldout_pairs(self):
        return self.inner.heldout_pairs()

    def train_dataloader(self) -> DataLoader:
        stream = MlpPairStream(
            self.inner.train_dataloader(),
            self.frozen,
            self.n_train_tokens,
            self.tokens_per_batch,
            self.buffer_tokens,
            self.seed,
        )
        return DataLoader(stream, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self.inner.val_dataloader()
