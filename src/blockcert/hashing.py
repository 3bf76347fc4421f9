"""SHA-256 of everything blockcert hashes: files, text, token ids, tensors. One home for each.

Every digest is lower-case hex. Token ids and tensors mix their dtype and shape into the digest,
so that the same bytes read with another shape never hash alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def documents_sha256(texts: Iterable[str]) -> str:
    """SHA-256 of a corpus: each document's UTF-8 bytes, length-prefixed, in order."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", errors="surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def token_ids_sha256(ids: torch.Tensor) -> str:
    """SHA-256 of int64 token ids, row-major, with the shape mixed in."""
    ids = ids.detach().to(torch.int64).contiguous().cpu()
    digest = hashlib.sha256(f"int64{tuple(ids.shape)}".encode())
    digest.update(ids.numpy().tobytes())
    return digest.hexdigest()


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of every tensor, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(name.encode())
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
