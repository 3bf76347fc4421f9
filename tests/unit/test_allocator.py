"""keep_freed_memory: a big buffer allocated again and again is page-faulted once, not each time."""

import os
import subprocess
import sys

import pytest

# Allocate, touch and free a 64 MB buffer 12 times through glibc's malloc (torch's CPU allocator
# takes its buffers from the same heap) and print the minor page faults of the loop. Plain malloc,
# not torch: torch's own small allocations between the big ones split freed chunks for a few
# iterations before the heap settles, which would make the count depend on timing.
REALLOCATE = """
import ctypes, resource
from blockcert.allocator import keep_freed_memory
print(keep_freed_memory())
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(12):
    buffer = libc.malloc(64 * 2**20)
    ctypes.memset(buffer, 1, 64 * 2**20)
    libc.free(buffer)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")


def _faults(malloc: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != "BLOCKCERT_MALLOC"}
    if malloc is not None:
        env["BLOCKCERT_MALLOC"] = malloc
    out = subprocess.run(
        [sys.executable, "-c", REALLOCATE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@linux_only
def test_freed_buffers_are_reused_and_the_system_default_is_kept_on_request():
    kept, kept_faults = _faults(None)
    system, system_faults = _faults("system")
    assert kept and not system
    pages = 64 * 2**20 // 4096  # one 64 MB buffer
    assert system_faults >= 11 * pages  # the default faults every allocation in again
    assert kept_faults <= 3 * pages // 2  # kept: the first allocation only
