"""Float weights quantized at load (``quantization = "int8" | "int4"`` on a safetensors checkpoint, or a GGUF whose
own format is asked to change): groups of 32 along a row, round to nearest, float16 scales.

- int8: symmetric, s = max|w| / 127 (GGUF Q8_0's scheme).
- int4: affine, s = (max - min) / 15 and m = min (GGUF Q4_1's scheme), so a group's extremes are represented.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ember.runtimes.text.quant.formats import QuantizedTensor, dequantize, pack_int4

GROUP = 32


def quantize(w: Tensor, bits: int) -> QuantizedTensor:
    """W [N, K] (K a multiple of 32) as int8 or int4 groups of 32."""
    n, k = w.shape
    if k % GROUP:
        raise ValueError(f"in_features={k} is not a multiple of {GROUP}")
    g = w.float().reshape(n, k // GROUP, GROUP)
    if bits == 8:
        scales = (g.abs().amax(dim=-1) / 127).to(torch.float16)
        s = scales.float()[..., None]
        q = torch.where(s > 0, g / s, 0).round().clamp(-127, 127).to(torch.int8)
        return QuantizedTensor((n, k), 8, GROUP, q.reshape(n, k), scales, kind="int8")
    if bits == 4:
        lo, hi = g.amin(dim=-1), g.amax(dim=-1)
        scales = ((hi - lo) / 15).to(torch.float16)
        mins = lo.to(torch.float16)
        s, m = scales.float()[..., None], mins.float()[..., None]
        q = torch.where(s > 0, (g - m) / s, 0).round().clamp(0, 15).to(torch.uint8)
        return QuantizedTensor((n, k), 4, GROUP, pack_int4(q.reshape(n, k)), scales, mins=mins, kind="int4")
    raise ValueError(f"bits={bits}: 4 or 8")


def quantizable(w: Tensor) -> bool:
    """Whether a weight can be quantized here: a matrix whose rows split into groups of 32."""
    return w.dim() == 2 and w.shape[1] % GROUP == 0


def requantize(t: QuantizedTensor, bits: int) -> QuantizedTensor:
    """A GGUF tensor in another format: its dequantized values quantized again."""
    return quantize(dequantize(t), bits)
