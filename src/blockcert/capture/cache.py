"""Sharded safetensors cache of residual pairs, keyed by (model hash, data hash, block).

A capacity sweep reads pairs from here instead of re-running the teacher. A cache directory is
complete only once its manifest exists; the manifest is written last and atomically. While a
capture runs, progress.json lists the shards written so far (each written atomically, then the
list): an interrupted capture resumes after them (ShardWriter.resumed) instead of starting over.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import IterableDataset

from blockcert.atomic import write_atomic, write_text_atomic
from blockcert.hashing import sha256_text

Pair = tuple[torch.Tensor, torch.Tensor]
MANIFEST = "manifest.json"
PROGRESS = "progress.json"  # an unfinished capture: batch size and the shards written so far


def cache_dir(root: str | Path, model_sha256: str, tokens_sha256: str, block: int) -> Path:
    key = sha256_text(f"{model_sha256}|{tokens_sha256}|{block}")[:20]
    return Path(root).expanduser() / f"block{block:03d}-{key}"


def is_complete(directory: Path) -> bool:
    return (directory / MANIFEST).is_file()


class ShardWriter:
    """Writes the `(x_in, x_out)` batches of one block as numbered shards, then the manifest.

    batch_size: the prompts per shard (every shard but the last), recorded in progress.json so
    that a resumed capture continues with shards of the same prompts."""

    def __init__(self, directory: Path, batch_size: int | None = None):
        self.directory, self.batch_size = directory, batch_size
        self.shards: list[str] = []
        self.rows: list[int] = []
        directory.mkdir(parents=True, exist_ok=True)

    def resumed(self) -> int:
        """Take over the shards of an interrupted capture with this batch size (every listed
        file present); returns how many batches they hold (0: start over)."""
        path = self.directory / PROGRESS
        if self.batch_size is None or not path.is_file():
            return 0
        try:
            state = json.loads(path.read_text())
        except ValueError:
            return 0
        shards, rows = state.get("shards", []), state.get("rows", [])
        whole = all(r == self.batch_size for r in rows) and len(shards) == len(rows)
        present = all((self.directory / name).is_file() for name in shards)
        if state.get("batch_size") != self.batch_size or not whole or not present:
            return 0
        self.shards, self.rows = list(shards), list(rows)
        return len(shards)

    def truncate(self, n_shards: int) -> None:
        """Keep the first n_shards (a capture of several blocks resumes at the earliest)."""
        self.shards, self.rows = self.shards[:n_shards], self.rows[:n_shards]

    def add(self, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        name = f"shard_{len(self.shards):05d}.safetensors"
        tensors = {"x_in": x_in.contiguous(), "x_out": x_out.contiguous()}
        write_atomic(self.directory / name, lambda tmp: save_file(tensors, str(tmp)))
        self.shards.append(name)
        self.rows.append(len(x_in))
        if self.batch_size is not None:
            state = {"batch_size": self.batch_size, "shards": self.shards, "rows": self.rows}
            write_text_atomic(self.directory / PROGRESS, json.dumps(state))

    def finish(self, meta: dict) -> Path:
        manifest = {**meta, "shards": self.shards, "rows": self.rows}
        write_text_atomic(self.directory / MANIFEST, json.dumps(manifest, indent=2))
        (self.directory / PROGRESS).unlink(missing_ok=True)
        return self.directory


def fill_cache(directory: Path, pairs: Iterable[Pair], meta: dict) -> Path:
    """Write every `(x_in, x_out)` batch as one shard, then the manifest."""
    writer = ShardWriter(directory)
    for x_in, x_out in pairs:
        writer.add(x_in, x_out)
    return writer.finish(meta)


class CachedPairs(IterableDataset):
    """Reads shards one at a time; with `shuffle`, shard order and prompts within a shard vary."""

    def __init__(self, directory: Path, batch_size: int, shuffle: bool = False, seed: int = 0):
        manifest = json.loads((directory / MANIFEST).read_text())
        self.directory, self.shards, self.rows = directory, manifest["shards"], manifest["rows"]
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = 0

    def __len__(self) -> int:
        return sum(-(-rows // self.batch_size) for rows in self.rows)

    def __iter__(self) -> Iterator[Pair]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.shards), generator=generator) if self.shuffle else None
        for i in order.tolist() if order is not None else range(len(self.shards)):
            shard = load_file(str(self.directory / self.shards[i]))
            x_in, x_out = shard["x_in"], shard["x_out"]
            rows = torch.randperm(len(x_in), generator=generator) if self.shuffle else None
            if rows is not None:
                x_in, x_out = x_in[rows], x_out[rows]
            for start in range(0, len(x_in), self.batch_size):
                yield x_in[start : start + self.batch_size], x_out[start : start + self.batch_size]
