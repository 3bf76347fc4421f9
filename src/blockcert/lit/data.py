"""LightningDataModule of residual pairs: teacher stream, or the shard cache when enabled."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from blockcert.capture.cache import CachedPairs, cache_dir, fill_cache, is_complete
from blockcert.capture.prompts import PromptSplit, token_ids_sha256
from blockcert.capture.stream import ResidualPairStream
from blockcert.models.adapters import BlockAdapter


class ResidualPairDataModule(L.LightningDataModule):
    """Train pairs from the training prompts, validation pairs from the held-out prompts."""

    def __init__(
        self,
        adapter: BlockAdapter,
        block: int,
        prompts: PromptSplit,
        batch_size: int = 8,
        cache: bool = True,
        cache_root: str = "~/.cache/blockcert/pairs",
        seed: int = 0,
    ):
        super().__init__()
        self.adapter, self.block, self.prompts = adapter, block, prompts
        self.batch_size, self.cache, self.cache_root, self.seed = (
            batch_size,
            cache,
            cache_root,
            seed,
        )
        self.pairs_source: dict[str, str] = {}

    def _pairs(self, split: str, shuffle: bool) -> IterableDataset:
        ids: torch.Tensor = getattr(self.prompts, split)
        stream = ResidualPairStream(self.adapter, self.block, ids, self.batch_size)
        if not self.cache:
            self.pairs_source[split] = "teacher (streamed, not cached)"
            return stream
        model_sha = self.adapter.teacher.weights_sha256
        directory = cache_dir(self.cache_root, model_sha, token_ids_sha256(ids), self.block)
        if is_complete(directory):
            self.pairs_source[split] = f"cache:{directory}"
        else:
            meta = {"model_sha256": model_sha, "block": self.block, "split": split}
            fill_cache(directory, stream, meta)
            self.pairs_source[split] = f"teacher -> cache:{directory}"
        return CachedPairs(Path(directory), self.batch_size, shuffle=shuffle, seed=self.seed)

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
