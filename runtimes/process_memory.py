"""Handing a worker's freed memory back to the operating system: after loading, and whenever the engine goes idle.

glibc keeps freed blocks for reuse, and its mmap threshold is dynamic: each time a block above it is freed it rises
to that block's size (up to 32 MiB), so later blocks of that size come from the heap, whose freed pages stay with
the process. A text worker's prefill steps make exactly such temporaries (each quantized matrix dequantized for the
step's dense matmul: 27.5 MiB for Qwen2.5-Coder-1.5B's MLP), and they stay resident after the step: measured on that
model, 1451 MiB after load and 1667 MiB after three prompts. Fixing the threshold low (mallopt) gives them back at
once, but then every step faults in fresh zeroed pages for every such temporary: SmolLM2 at 16 streams ran at about
0.6x. So while busy, the worker reuses them; going idle, it hands them back (``malloc_trim``: every arena, and
free pages in the middle of the heap too, not only its top).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> bool:
    """Give the pages of freed blocks back to the OS; False where the C library has no malloc_trim (not glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
