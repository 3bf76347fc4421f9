"""keep_freed_memory: a big tensor allocated again and again is page-faulted once, not each time."""

import os
import subprocess
import sys

import pytest

# Allocate a 64 MB tensor again and again (glibc's default maps and unmaps each one) and print
# the minor page faults of the last 8 allocations, once the heap has settled (the first few may
# still grow or move it).
REALLOCATE = """
import resource, sys, torch
from blockcert.allocator import keep_freed_memory
print(keep_freed_memory())
for _ in range(8):
    torch.ones(16 * 2**20).sum()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    torch.ones(16 * 2**20).sum()
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
    pages = 16 * 2**20 * 4 // 4096  # one 64 MB tensor
    assert system_faults >= 7 * pages  # the default faults every allocation in again
    assert kept_faults <= pages // 2  # kept: the freed buffer is reused as it is
