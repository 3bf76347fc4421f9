"""Read the files of an untrusted run directory without following anything it points at.

A run directory is untrusted input. Every file a certificate names must be a plain name (no
separator, no `..`, not hidden) of a regular file directly inside the run directory: no symlink,
FIFO or device is opened (a FIFO would block the reader forever, /dev/zero would read until
memory runs out), and no file is read past a size cap. Files are read once, as bytes: what is
hashed is exactly what is parsed.
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

from blockcert.errors import VerificationError

MiB = 1 << 20
CERTIFICATE_MAX_BYTES = 16 * MiB
GRAPH_MAX_BYTES = 4 * MiB
SAFETENSORS_HEADER_MAX_BYTES = 1 * MiB
JSON_MAX_DEPTH = 64
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# safetensors dtype names -> bytes per element (the ones a run directory may hold)
SAFETENSORS_DTYPES = {"F32": 4, "I64": 8, "F16": 2, "BF16": 2, "F64": 8, "I32": 4}


def check_plain_name(where: str, field: str, name: object) -> str:
    """`name` as a plain file name inside the run directory, or VerificationError."""
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name) or ".." in name:
        raise VerificationError(
            f"{where}: field {field} must be a plain file name inside the run directory "
            f"(letters, digits, '.', '_', '-'), not {name!r}."
        )
    return name


def _regular(path: Path, where: str) -> os.stat_result:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise VerificationError(f"{where}: {path} is missing.") from None
    except OSError as err:
        raise VerificationError(f"{where}: {path} cannot be read ({err.strerror}).") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a regular file"
        raise VerificationError(f"{where}: {path} is {kind}; only regular files are read.")
    return info


def read_regular(path: Path, max_bytes: int, where: str) -> bytes:
    """The bytes of `path`, a regular file (not a symlink) of at most `max_bytes`."""
    info = _regular(path, where)
    if info.st_size > max_bytes:
        raise VerificationError(
            f"{where}: {path} has {info.st_size} bytes, above the {max_bytes}-byte cap."
        )
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise VerificationError(f"{where}: {path} cannot be opened ({err.strerror}).") from None
    with os.fdopen(fd, "rb") as handle:
        opened = os.fstat(handle.fileno())
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
            info.st_dev,
            info.st_ino,
        ):
            raise VerificationError(f"{where}: {path} changed while it was opened.")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise VerificationError(f"{where}: {path} grew above the {max_bytes}-byte cap.")
    return data


def read_run_file(run_dir: Path, name: object, field: str, max_bytes: int, where: str) -> bytes:
    """A file a certificate names (field `field`) as bytes, checked as above."""
    return read_regular(run_dir / check_plain_name(where, field, name), max_bytes, where)


def json_depth_ok(value: object, limit: int = JSON_MAX_DEPTH) -> bool:
    """True when no container nests deeper than `limit` (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def parse_json(data: bytes, where: str) -> object:
    """JSON text as Python values; malformed, non-UTF-8, NaN or too deeply nested: one line."""

    def refuse_constant(name: str):
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(data.decode("utf-8"), parse_constant=refuse_constant)
    except RecursionError:
        raise VerificationError(f"{where}: the JSON nests too deeply.") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise VerificationError(f"{where}: not valid JSON ({err}).") from None
    if not json_depth_ok(value):
        raise VerificationError(f"{where}: the JSON nests deeper than {JSON_MAX_DEPTH} levels.")
    return value


def _naturals(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value
    )


def safetensors_header(data: bytes, where: str) -> dict[str, dict]:
    """{tensor name: {dtype, shape, data_offsets}} of a safetensors file, every entry checked.

    The header is read before any tensor is built: its dtypes, shapes and offsets must describe
    exactly the bytes that follow it, so nothing is allocated from a size the file only claims.
    """
    if len(data) < 8:
        raise VerificationError(f"{where}: too short for a safetensors file.")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(SAFETENSORS_HEADER_MAX_BYTES, len(data) - 8):
        raise VerificationError(f"{where}: the safetensors header size {size} is not plausible.")
    header = parse_json(data[8 : 8 + size], where)
    if not isinstance(header, dict):
        raise VerificationError(f"{where}: the safetensors header is not a JSON object.")
    header.pop("__metadata__", None)
    end = 0
    for name, entry in header.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if dtype not in SAFETENSORS_DTYPES or not _naturals(shape) or not _naturals(offsets):
            raise VerificationError(f"{where}: tensor {name!r} has a malformed header entry.")
        count = 1
        for dim in shape:
            count *= dim
        if len(offsets) != 2 or offsets[1] - offsets[0] != count * SAFETENSORS_DTYPES[dtype]:
            raise VerificationError(f"{where}: tensor {name!r}: its offsets disagree with shape.")
        end = max(end, offsets[1])
    if 8 + size + end != len(data):
        raise VerificationError(f"{where}: the tensors do not fill the file exactly.")
    return header


def tensor_elements(header: dict[str, dict]) -> int:
    total = 0
    for entry in header.values():
        count = 1
        for dim in entry["shape"]:
            count *= dim
        total += count
    return total


def find_files(root: Path, name: str) -> Iterator[Path]:
    """Every entry called `name` under `root`, in sorted path order, never entering a
    symlinked directory (the caller rejects entries that are not regular files)."""
    found = []
    for directory, subdirs, files in os.walk(root, followlinks=False):
        subdirs.sort()
        entries = set(files) | set(subdirs)
        if name in entries:
            found.append(Path(directory) / name)
    return iter(sorted(found))
