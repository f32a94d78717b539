"""A worker's allocator policy: large temporaries go back to the operating system when they are freed.

glibc serves allocations above its mmap threshold with mmap and unmaps them on free, but the threshold is dynamic:
each time such a block is freed it rises to that block's size (up to 32 MiB), and from then on blocks of that size
come from the heap, whose freed memory stays with the process. A text worker's prefill steps make exactly such
temporaries (every quantized matrix dequantized for the step's dense matmul: 27.5 MiB each for Qwen2.5-Coder-1.5B's
MLP), so its resident memory climbed after the first few prompts and stayed there: measured on that model, 1451
MiB after load, 1667 MiB after three prompts, against 1494 MiB with the threshold fixed at 1 MiB. Setting it with
mallopt turns the dynamic adjustment off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("ember.runtimes")

# Blocks from this size up are mapped on their own and returned when freed.
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def return_large_frees(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process; False where the C library is not glibc
    (nothing to do there: other allocators have no such ratchet, or their own settings)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    if not ok:
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) failed: freed temporaries may stay resident", threshold)
    return ok
