"""Keep freed tensor memory in the process heap (glibc), so that big CPU buffers are reused.

glibc serves every allocation above 32 MB with a fresh mmap and unmaps it on free, so each
large tensor (a batch's logits [8, 127, 49152] fp64 are 400 MB; a block's states, the Lipschitz
probes) is page-faulted and zeroed by the kernel again, one 4 KiB page at a time, every time a
loop allocates it. The pipelines here allocate the same sizes over and over: on SmolLM2 the
teacher trajectory and the stitched evaluation of certify.py spend ~30 % of their wall time in
those faults (bench/bench_allocator.py: 1.6x wall on that loop). Serving large blocks from the
heap and not trimming it keeps freed buffers mapped for the next batch. The cost is memory: freed
memory goes back to the system only at exit, and a heap can fragment, so peak RSS may grow (that
bench: 2.2 -> 3.3 GiB; certify.py on 30 SmolLM2 blocks: 4.5 -> 4.9 to 6.8 GiB from run to run).

BLOCKCERT_MALLOC=system leaves glibc's defaults (for a process that shares the machine and must
give memory back). Elsewhere (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>: free heap top kept before returning it to the system
M_MMAP_MAX = -4  # the most chunks served by mmap at once; 0 serves every size from the heap
NEVER_TRIM = -1  # mallopt(3): "-1 disables trimming completely"


def keep_freed_memory() -> bool:
    """Serve large allocations from the heap and keep freed ones; True if glibc took it."""
    if not sys.platform.startswith("linux") or os.environ.get("BLOCKCERT_MALLOC") == "system":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
