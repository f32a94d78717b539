"""The dtype a worker runs its model in: the config's name, with ``auto`` resolved for the hardware at hand.

``auto`` is bfloat16 where the device computes it natively (a CUDA GPU that supports it; a CPU with AVX512-BF16
or AMX, whose bfloat16 dot products do twice the fp32 work per cycle) and float32 elsewhere, where bfloat16 would
be emulated and slower than the float32 it replaces.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# /proc/cpuinfo flags of CPUs with native bfloat16 arithmetic.
_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bfloat16 instructions (Linux; elsewhere False, which only costs speed)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return not _BF16_CPU_FLAGS.isdisjoint(line.split(":", 1)[1].split())
    return False


def resolve_dtype(name: str, device: torch.device | str = "cpu") -> torch.dtype:
    """The torch dtype for a config name (``float32``, ``bfloat16``, ``float16`` or ``auto``) on ``device``."""
    if name != "auto":
        return DTYPES[name]
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
