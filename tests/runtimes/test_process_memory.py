"""The worker's allocator policy (runtimes/process_memory.py): freed large temporaries leave the process."""

from __future__ import annotations

import subprocess
import sys

import pytest

# In a fresh interpreter, on a thread of its own (as a worker's engine thread: its own malloc arena) and through
# posix_memalign (as torch allocates tensors): free one 16 MiB block, which raises glibc's dynamic mmap threshold
# to 16 MiB; then make 24 blocks of 8 MiB, each followed by a small allocation that pins the arena, touch them,
# free them, and print how much of their memory is still resident.
SCRIPT = """
import ctypes, sys, threading
from ember.runtimes.process_memory import return_large_frees
if sys.argv[1] == "fixed":
    assert return_large_frees()
libc = ctypes.CDLL(None)
libc.free.argtypes = [ctypes.c_void_p]
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024
def alloc(size):
    p = ctypes.c_void_p()
    assert libc.posix_memalign(ctypes.byref(p), 64, size) == 0
    return p.value
BIG = 8 << 20
left = []
def work():
    libc.free(alloc(2 * BIG))
    before = rss()
    blocks = []
    for _ in range(24):
        blocks.append(alloc(BIG))
        ctypes.memset(blocks[-1], 1, BIG)
        alloc(64)  # never freed
    for p in blocks:
        libc.free(p)
    left.append(rss() - before)
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(left[0])
"""


def resident_after_free(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_large_blocks_leave_the_process() -> None:
    assert resident_after_free("default") > 100  # glibc's dynamic threshold keeps most of the 192 MiB
    assert resident_after_free("fixed") < 16
