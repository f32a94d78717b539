"""The text runtime's native CPU ops from ``ember._C``, when the extension is built; callers fall back otherwise.

Each op here has a pure-torch reference beside its caller (``attention.paged_decode_native``) that the tests
compare it with; the reference is what runs wherever the extension is not built.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.cache
def available() -> bool:
    """Whether ``ember._C`` is built and registered its ops."""
    try:
        import ember._C  # noqa: F401
    except ImportError:
        return False
    return hasattr(torch.ops, "ember") and hasattr(torch.ops.ember, "paged_decode")


def covers(q: Tensor) -> bool:
    """Whether the native paged decode runs for queries like ``q`` (built, on the CPU, float32 or bfloat16)."""
    return q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16) and available()


def paged_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor, context_lens: Tensor) -> Tensor:
    """``attention.paged_decode`` reading the blocks in place (no gathered copy of the context)."""
    if not available():
        raise RuntimeError("ember._C is not built: use attention.paged_decode, which falls back to torch")
    q = q.contiguous()
    out = torch.empty_like(q)
    torch.ops.ember.paged_decode(out, q, k_cache, v_cache, block_table, context_lens, q.shape[-1] ** -0.5)
    return out
