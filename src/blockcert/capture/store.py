"""The pair store: residual pairs of many blocks, captured in one teacher pass, read per block.

`capture(blocks, split, ids)` runs the teacher once over `ids` for every block whose pairs are
not cached yet (none cached: no teacher run at all) and streams each block's pairs into its own
cache directory, one shard per batch; an interrupted capture resumes after the batches that
every missing block has already written (capture/cache.py, progress.json).
`dataset(block, split, ids)` then reads that directory. With the cache disabled nothing is
stored and every dataset streams from the teacher again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch.utils.data import IterableDataset

from blockcert.capture.cache import CachedPairs, ShardWriter, cache_dir, is_complete
from blockcert.capture.stream import ResidualPairStream, teacher_pass
from blockcert.hashing import token_ids_sha256
from blockcert.models.adapters import BlockAdapter

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 10.0


class PairStore:
    """Pairs of `adapter`'s blocks under `root`, keyed by (weights hash, token ids hash, block).

    `sources[(block, split)]` says where a block's pairs came from (certificate field
    data.pairs_source); `teacher_prompts` counts the prompts the teacher ran over.
    """

    def __init__(self, adapter: BlockAdapter, root: str | Path, batch_size: int, enabled=True):
        self.adapter, self.root, self.batch_size, self.enabled = adapter, root, batch_size, enabled
        self.sources: dict[tuple[int, str], str] = {}
        self.teacher_prompts = 0

    def directory(self, block: int, ids: torch.Tensor) -> Path:
        model_sha256 = self.adapter.teacher.weights_sha256
        return cache_dir(self.root, model_sha256, token_ids_sha256(ids), block)

    def capture(self, blocks: list[int], split: str, ids: torch.Tensor) -> None:
        """Cache the pairs of every block in `blocks` on `ids`, running the teacher at most once."""
        missing = []
        for k in blocks:
            directory = self.directory(k, ids)
            if is_complete(directory):
                self.sources.setdefault((k, split), f"cache:{directory}")
            else:
                missing.append(k)
        if not missing:
            return
        writers = {k: ShardWriter(self.directory(k, ids), self.batch_size) for k in missing}
        skip = min(writer.resumed() for writer in writers.values())
        for writer in writers.values():
            writer.truncate(skip)
        n_batches = -(-len(ids) // self.batch_size)
        log.info(
            "capture %s: %d prompts x %d tokens through blocks 0..%d, pairs of %d block(s)%s",
            split,
            len(ids),
            ids.shape[1],
            max(missing),
            len(missing),
            f", resuming after batch {skip}/{n_batches}" if skip else "",
        )
        rest = ids[skip * self.batch_size :]
        start = last = time.perf_counter()
        for index, k, x_in, x_out in teacher_pass(self.adapter, rest, self.batch_size, missing):
            writers[k].add(x_in, x_out)
            now = time.perf_counter()
            if k == max(missing) and now - last >= PROGRESS_EVERY_S:
                last = now
                done = min(len(rest), (index + 1) * self.batch_size) * ids.shape[1]
                log.info(
                    "capture %s: batch %d/%d, %.0f tokens/s",
                    split,
                    skip + index + 1,
                    n_batches,
                    done / (now - start),
                )
        self.teacher_prompts += len(rest)
        meta = {"model_sha256": self.adapter.teacher.weights_sha256, "split": split}
        for k, writer in writers.items():
            writer.finish({**meta, "block": k})
            self.sources[(k, split)] = f"teacher -> cache:{writer.directory}"
        elapsed = time.perf_counter() - start
        log.info(
            "capture %s: done in %.1f s (%.0f tokens/s)",
            split,
            elapsed,
            rest.numel() / max(elapsed, 1e-9),
        )

    def dataset(
        self, block: int, split: str, ids: torch.Tensor, shuffle: bool = False, seed: int = 0
    ) -> IterableDataset:
        """The pairs of `block` on `ids`: read from the cache (captured first if missing)."""
        if not self.enabled:
            self.sources[(block, split)] = "teacher (streamed, not cached)"
            return ResidualPairStream(self.adapter, block, ids, self.batch_size)
        self.capture([block], split, ids)
        return CachedPairs(self.directory(block, ids), self.batch_size, shuffle=shuffle, seed=seed)
