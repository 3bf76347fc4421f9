"""Which residual blocks a run covers: the one home of the block-index check.

`block=K` names one block; `blocks=` names several: `all`, a list `[0,5,12]`, one index, or
as a string `0,5,12` or `range(a,b)` / `range(a,b,step)` (Python's half-open range). Indices
are 0-based: block k maps h_k to h_{k+1}.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from blockcert.errors import BlockCertError

_RANGE = re.compile(r"range\((\d+),(\d+)(?:,([1-9]\d*))?\)")
_LIST = re.compile(r"\d+(?:,\d+)*")
BLOCKS_USAGE = "use blocks=all, blocks=[0,5,12] or blocks='range(20,30)'"


def check_block(block: int, num_blocks: int, model: str = "the model") -> int:
    """`block` itself if it indexes one of `num_blocks` blocks, else a one-line error."""
    if isinstance(block, bool) or not isinstance(block, int):
        raise BlockCertError(f"block={block!r} must be an integer block index, e.g. block=12.")
    if not 0 <= block < num_blocks:
        raise BlockCertError(
            f"block={block} is out of range: {model} has blocks 0..{num_blocks - 1}."
        )
    return block


def parse_blocks(spec) -> list[int] | None:
    """The indices `spec` names, or None for `all` (the count is known only once loaded)."""
    if isinstance(spec, str):
        text = spec.replace(" ", "")
        if text == "all":
            return None
        match = _RANGE.fullmatch(text)
        if match is not None:
            start, stop, step = (int(g) if g else 1 for g in match.groups())
            items = list(range(start, stop, step))
        elif _LIST.fullmatch(text):
            items = [int(k) for k in text.split(",")]
        else:
            raise BlockCertError(f"blocks={spec!r} names no blocks; {BLOCKS_USAGE}.")
    else:
        items = list(spec) if isinstance(spec, Sequence) else [spec]
    if not items or any(isinstance(k, bool) or not isinstance(k, int) for k in items):
        raise BlockCertError(f"blocks={spec!r} must list integer block indices; {BLOCKS_USAGE}.")
    return items


def select_blocks(spec, num_blocks: int, model: str = "the model") -> list[int]:
    """Sorted distinct block indices named by `spec`, each checked against `num_blocks`."""
    indices = parse_blocks(spec)
    if indices is None:
        return list(range(num_blocks))
    return sorted({check_block(k, num_blocks, model) for k in indices})
