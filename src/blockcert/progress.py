"""Progress of long loops where a person watches: a bar on a terminal, lines in a log.

A progress bar redraws one terminal line; written to a file it shows nothing useful, so when
stderr is not a terminal the same loop logs a line at most every `every_s` seconds and one at
its end. train.py, certify.py and edit.py wrap their long loops (teacher passes, per-block
stages, fits) in `progress`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("blockcert.progress")


def on_terminal() -> bool:
    """Whether a person watches stderr (a terminal): a bar, else log lines."""
    return sys.stderr.isatty()


def progress(
    items: Iterable[T], total: int | None, what: str, unit: str = "it", every_s: float = 10.0
) -> Iterator[T]:
    """Yield `items`, showing how far the loop is (`what`: e.g. "teacher pass")."""
    if on_terminal():
        from tqdm.auto import tqdm

        yield from tqdm(items, total=total, desc=what, unit=unit, leave=False, disable=None)
        return
    start = last = time.perf_counter()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= every_s:
            last = now
            of = f"/{total}" if total is not None else ""
            log.info("%s: %d%s %s (%.0f s)", what, done, of, unit, now - start)
    if done:
        log.info("%s: %d %s done (%.1f s)", what, done, unit, time.perf_counter() - start)
