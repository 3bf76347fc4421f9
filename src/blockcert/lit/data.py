"""LightningDataModule of residual pairs of one block, read through the pair store."""

from __future__ import annotations

from functools import cached_property

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from blockcert.capture.prompts import PromptSplit
from blockcert.capture.store import PairStore
from blockcert.models.adapters import BlockAdapter


class ResidualPairDataModule(L.LightningDataModule):
    """Train pairs from the training prompts, validation pairs from the held-out prompts.

    `store` is shared by the blocks of one run (pairs captured in one teacher pass); without
    it the module makes its own from `batch_size`, `cache` and `cache_root`.
    """

    def __init__(
        self,
        adapter: BlockAdapter,
        block: int,
        prompts: PromptSplit,
        batch_size: int = 8,
        cache: bool = True,
        cache_root: str = "~/.cache/blockcert/pairs",
        seed: int = 0,
        store: PairStore | None = None,
    ):
        super().__init__()
        self.adapter, self.block, self.prompts, self.seed = adapter, block, prompts, seed
        self.store = store or PairStore(adapter, cache_root, batch_size, enabled=cache)

    @property
    def teacher(self):
        """The teacher whose block is certified (blockcert.models.teacher.Teacher)."""
        return self.adapter.teacher

    @property
    def pairs_source(self) -> dict[str, str]:
        """{split: where its pairs came from} for the splits this module has read."""
        return {
            split: source
            for (block, split), source in self.store.sources.items()
            if block == self.block
        }

    def _pairs(self, split: str, shuffle: bool) -> IterableDataset:
        ids: torch.Tensor = getattr(self.prompts, split)
        return self.store.dataset(self.block, split, ids, shuffle=shuffle, seed=self.seed)

    @cached_property
    def train_set(self) -> IterableDataset:
        # Built on first use: a full-capacity run never trains and never captures train pairs.
        return self._pairs("train", shuffle=True)

    @cached_property
    def heldout_set(self) -> IterableDataset:
        return self._pairs("heldout", shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.heldout_set, batch_size=None)

    def train_pairs_in_order(self) -> IterableDataset:
        """The training pairs unshuffled, batch by batch in prompt order (cascade targets)."""
        return self._pairs("train", shuffle=False)

    def heldout_pairs(self):
        """Iterate the held-out (x_in, x_out) batches again (for certificates)."""
        return iter(self.heldout_set)

    def sample_inputs(self, n_batches: int) -> list[torch.Tensor]:
        """The first `n_batches` training inputs x_in (for importance scores and refits)."""
        batches = []
        for x_in, _ in self.train_set:
            batches.append(x_in)
            if len(batches) >= n_batches:
                break
        return batches
