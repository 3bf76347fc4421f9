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

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from blockcert.errors import BlockCertError
from blockcert.models.adapters import BlockAdapter
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import Surrogate

Tensor = torch.Tensor
Pair = tuple[Tensor, Tensor]


class StitchedInputs:
    """h~_k of the training prompts, one `[b, s, d]` batch each, for blocks taken in order.

    h~_0 = embed(ids); h~_{j+1} = g_j(h~_j) with g_j the surrogate recorded by `fitted(j, g_j)`,
    or the teacher block f_j where none was: a stream never given a surrogate is the teacher's.
    `at(k)` advances the stream to block k (never back), so record g_j before asking past j.
    """

    def __init__(self, adapter: BlockAdapter, ids: Tensor, batch_size: int):
        self.adapter, self.block = adapter, 0
        self.surrogates: dict[int, Surrogate] = {}
        with torch.no_grad():
            self.states = [
                adapter.embed(ids[i : i + batch_size]).float()
                for i in range(0, len(ids), batch_size)
            ]

    def fitted(self, k: int, surrogate: Surrogate) -> None:
        if k < self.block:
            raise BlockCertError(
                f"block {k}'s surrogate came after the stitched inputs reached block {self.block}; "
                "fit the blocks in increasing order."
            )
        self.surrogates[k] = surrogate

    @torch.no_grad()
    def at(self, k: int) -> list[Tensor]:
        """h~_k per batch."""
        if k < self.block:
            raise BlockCertError(f"the stitched inputs are past block {k} (at {self.block}).")
        while self.block < k:
            g = self.surrogates.get(self.block)
            if g is None:
                self.states = [self.adapter.block(self.block, h).float() for h in self.states]
            else:
                self.states = [run_graph(g.graph, g.weights, h) for h in self.states]
            self.block += 1
        return self.states


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


class CascadeDataModule(L.LightningDataModule):
    """Block k's teacher datamodule with its training pairs replaced by (h~_k, h_{k+1}).

    Validation, the held-out pairs and every field a certificate reads stay the teacher's.
    """

    def __init__(self, teacher, stitched: Sequence[Tensor], seed: int = 0):
        super().__init__()
        self.base, self.seed = teacher, seed  # the teacher's datamodule of this block
        self.adapter, self.block, self.prompts = teacher.adapter, teacher.block, teacher.prompts
        # targets: the teacher pairs of the training prompts, in prompt order, batch by batch
        self.pairs = []
        for h, (x_in, x_out) in zip(stitched, teacher.train_pairs_in_order(), strict=True):
            if h.shape != x_in.shape:
                raise BlockCertError(
                    f"block {self.block}: stitched inputs {tuple(h.shape)} do not line up with "
                    f"the teacher pairs {tuple(x_in.shape)}; use one batch size for both."
                )
            self.pairs.append((h, x_out))

    @property
    def teacher(self):
        """The teacher whose block is certified (as the base datamodule's `teacher`)."""
        return self.base.teacher

    @property
    def pairs_source(self) -> dict[str, str]:
        return {
            **self.base.pairs_source,
            "train_inputs": "stitched: the run's surrogates of the earlier blocks (cascade)",
        }

    def heldout_pairs(self):
        return self.base.heldout_pairs()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(MemoryBatches(self.pairs, shuffle=True, seed=self.seed), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self.base.val_dataloader()


def quiet_trainer(
    max_epochs: int, gradient_clip_val: float, max_steps: int = -1, callbacks=None
) -> L.Trainer:
    """A Trainer for in-process fits: no logger, checkpoints, progress bar or validation."""
    return L.Trainer(
        callbacks=callbacks,
        max_epochs=max_epochs,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=gradient_clip_val,
    )


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
    trainer = quiet_trainer(max_epochs, gradient_clip_val)
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
    chosen = sorted(set(range(adapter.num_blocks) if blocks is None else blocks))
    teacher = StitchedInputs(adapter, train_ids, batch_size)  # given no surrogate: h_k
    student = StitchedInputs(adapter, train_ids, batch_size)
    surrogates: dict[int, Surrogate] = {}
    for k in chosen:
        h_k = teacher.at(k)
        targets = teacher.at(k + 1)  # h_{k+1} = f_k(h_k)
        inputs = student.at(k) if stitched else h_k
        surrogates[k] = fit(k, build(k, h_k), list(zip(inputs, targets, strict=True)))
        student.fitted(k, surrogates[k])
    return surrogates
