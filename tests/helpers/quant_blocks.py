"""Random GGUF blocks of every quantized type Ember reads, valid as the file format goes: random integers, and
float16 scale fields set to small finite values (random bits there would be NaN or inf half of the time)."""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as GT

# Offsets of each block's float16 fields.
HALF_FIELDS = {
    GT.Q4_0: (0,),
    GT.Q4_1: (0, 2),
    GT.Q5_0: (0,),
    GT.Q5_1: (0, 2),
    GT.Q8_0: (0,),
    GT.Q4_K: (0, 2),
    GT.Q5_K: (0, 2),
    GT.Q6_K: (208,),
}


def random_blocks(kind: GT, rows: int, cols: int, seed: int = 0, scale: float = 0.02) -> np.ndarray:
    """uint8 [rows, bytes per row]: a tensor [rows, cols] of type kind, as GGUFReader maps one."""
    rng = np.random.default_rng(seed)
    block, size = GGML_QUANT_SIZES[kind]
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    for at in HALF_FIELDS[kind]:
        halves = rng.uniform(-scale, scale, (rows, cols // block)).astype(np.float16)
        raw[..., at : at + 2] = halves.view(np.uint8).reshape(rows, cols // block, 2)
    return raw.reshape(rows, -1)
