"""Cascade training: block k learns on the inputs the already-built surrogates produce.

Teacher h_0 = embed(tokens), h_{k+1} = f_k(h_k); stitched h~_0 = h_0, h~_{k+1} = g_k(h~_k).
Per-block distillation fits g_k on teacher pairs (h_k, h_{k+1}); the cascade fits it on
(h~_k, h_{k+1}): the inputs the stitched model will really feed block k, the targets the
teacher's outputs on the teacher path, so g_k learns to undo the drift of g_0..g_{k-1}:

    min_g  mean_t ||g(h~_k)_t - h_{k+1,t}||^2   (+ the max-aware term of SurrogateModule).

Both streams advance block by block over the training prompts (one teacher pass in all, held
in memory one block at a time: two `[n, s, d]` fp32 tensors). Certificates stay measured on
teacher inputs (`certify_block` reads the teacher pairs of the held-out prompts), unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from blockcert.models.adapters import BlockAdapter
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Surrogate

Tensor = torch.Tensor
Pair = tuple[Tensor, Tensor]


@dataclass
class TwinStates:
    """h_k (teacher) and h~_k (stitched) of the training prompts, one `[b, s, d]` batch each."""

    block: int
    teacher: list[Tensor]
    stitched: list[Tensor]

    @classmethod
    @torch.no_grad()
    def start(cls, adapter: BlockAdapter, ids: Tensor, batch_size: int) -> TwinStates:
        """h_0 = h~_0 = embed(ids), batches of `batch_size` prompts in prompt order."""
        h0 = [
            adapter.embed(ids[i : i + batch_size]).float() for i in range(0, len(ids), batch_size)
        ]
        return cls(0, h0, list(h0))  # tensors are never written in place: sharing is safe

    @torch.no_grad()
    def teacher_outputs(self, adapter: BlockAdapter) -> list[Tensor]:
        """h_{k+1} = f_k(h_k) per batch: the targets of block k."""
        return [adapter.block(self.block, h).float() for h in self.teacher]

    @torch.no_grad()
    def advance(
        self, adapter: BlockAdapter, surrogate: Surrogate | None, teacher_out: list[Tensor]
    ) -> None:
        """Move to block k+1: h_{k+1} = teacher_out, h~_{k+1} = g_k(h~_k) (f_k where no g_k)."""
        if surrogate is None:
            self.stitched = [adapter.block(self.block, h).float() for h in self.stitched]
        else:
            self.stitched = [
                run_graph(surrogate.graph, surrogate.weights, h) for h in self.stitched
            ]
        self.teacher = teacher_out
        self.block += 1


class MemoryBatches(IterableDataset):
    """In-memory batches (e.g. (x_in, x_out) pairs); with `shuffle`, a new order every epoch."""

    def __init__(self, batches: Sequence, shuffle: bool = True, seed: int = 0):
        self.batches, self.shuffle, self.seed, self.epoch = list(batches), shuffle, seed, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.batches), generator=generator) if self.shuffle else None
        for i in order.tolist() if order is not None else range(len(self.batches)):
            yield self.batches[i]


class PairsDataModule(L.LightningDataModule):
    """Training pairs from memory; validation (optional) from held-out pairs."""

    def __init__(self, train: Sequence[Pair], heldout: Iterable[Pair] | None = None, seed=0):
        super().__init__()
        self.train, self.heldout, self.seed = train, heldout, seed

    def train_dataloader(self) -> DataLoader:
        return DataLoader(MemoryBatches(self.train, shuffle=True, seed=self.seed), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(MemoryBatches(self.heldout or [], shuffle=False), batch_size=None)


def distil(
    surrogate: Surrogate,
    pairs: Sequence[Pair],
    max_epochs: int,
    optim: dict | None = None,
    seed: int = 0,
    gradient_clip_val: float = 1.0,
) -> Surrogate:
    """`surrogate` trained by SurrogateModule's loss on `pairs` for `max_epochs` (CPU/auto)."""
    from blockcert.lit.module import SurrogateModule

    L.seed_everything(seed, verbose=False)
    module = SurrogateModule(surrogate, **(optim or {}))
    trainer = L.Trainer(
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        gradient_clip_val=gradient_clip_val,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=PairsDataModule(pairs, seed=seed))
    return module.surrogate()


Build = Callable[[int, list[Tensor]], Surrogate]
Fit = Callable[[int, Surrogate, list[Pair]], Surrogate]


def cascade_surrogates(
    adapter: BlockAdapter,
    train_ids: Tensor,
    batch_size: int,
    build: Build,
    fit: Fit,
    blocks: Iterable[int] | None = None,
    stitched: bool = True,
) -> dict[int, Surrogate]:
    """Surrogates of `blocks` (default all), fitted in block order.

    build(k, teacher inputs h_k per batch) -> the initial surrogate (e.g. importance cut + LS
    refit on teacher inputs); fit(k, surrogate, pairs) -> the trained one, with pairs
    (h~_k, h_{k+1}) when `stitched` (the cascade), else (h_k, h_{k+1}) (per-block distillation).
    """
    chosen = set(range(adapter.num_blocks) if blocks is None else blocks)
    states = TwinStates.start(adapter, train_ids, batch_size)
    surrogates: dict[int, Surrogate] = {}
    for k in range(adapter.num_blocks):
        if k > max(chosen, default=-1):
            break  # nothing downstream to fit
        targets = states.teacher_outputs(adapter)
        if k in chosen:
            inputs = states.stitched if stitched else states.teacher
            surrogates[k] = fit(
                k, build(k, states.teacher), list(zip(inputs, targets, strict=True))
            )
        states.advance(adapter, surrogates.get(k), targets)
    return surrogates
