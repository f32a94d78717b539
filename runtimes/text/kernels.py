"""The text runtime's native ops from ``ember._C``, when the extension is built; callers fall back otherwise.

Each op here has a pure-torch reference that the tests compare it with (``attention.paged_decode`` for the paged
decode, ``quant.formats.dequantize`` under the quantized linear); the reference is what runs wherever the
extension is not built. Every op has CPU kernels (csrc/cpu/); a CUDA build of the extension adds CUDA kernels for
most (csrc/cuda/: all but the prefill attention, quant_matmul and the decode stack), and a CUDA tensor takes one
only where its op has one.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ember.runtimes.text.quant.formats import QuantizedTensor


@functools.cache
def available() -> bool:
    """Whether ``ember._C`` is built and registered its ops."""
    try:
        import ember._C  # noqa: F401
    except ImportError:
        return False
    return hasattr(torch.ops, "ember") and hasattr(torch.ops.ember, "paged_decode")


def _ops() -> Any:
    """torch.ops.ember, with ember._C loaded (its ops register on import)."""
    if not available():
        raise RuntimeError("ember._C is not built: call the op's pure-torch reference instead")
    return torch.ops.ember


@functools.cache
def has_cuda_kernel(op: str) -> bool:
    """Whether ``ember._C`` was built with a CUDA kernel for ``torch.ops.ember.<op>`` (a CUDA build, setup.py)."""
    return available() and torch._C._dispatch_has_kernel_for_dispatch_key(f"ember::{op}", "CUDA")


def _runs_natively(device_type: str, dtype: torch.dtype, op: str) -> bool:
    """Whether ``op`` runs natively on tensors of this device type and dtype: on the CPU in float32 or bfloat16, or
    on CUDA in those or float16 where the build has the op's CUDA kernel."""
    if device_type == "cuda":
        return dtype in (torch.float32, torch.bfloat16, torch.float16) and has_cuda_kernel(op)
    return device_type == "cpu" and dtype in (torch.float32, torch.bfloat16) and available()


def _native(x: Tensor, op: str) -> bool:
    return _runs_natively(x.device.type, x.dtype, op)


def covers(q: Tensor) -> bool:
    """Whether the native paged decode runs for queries like ``q`` (built; on the CPU, float32 or bfloat16, or on
    CUDA where the build has its kernel)."""
    return _native(q, "paged_decode")


def paged_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_table: Tensor, context_lens: Tensor) -> Tensor:
    """``attention.paged_decode`` reading the blocks in place (no gathered copy of the context)."""
    q = q.contiguous()
    out = torch.empty_like(q)
    _ops().paged_decode(out, q, k_cache, v_cache, block_table, context_lens, q.shape[-1] ** -0.5)
    return out


@functools.cache
def has_paged_prefill() -> bool:
    """Whether ``ember._C`` has the prefill attention (an older build may lack it)."""
    return available() and hasattr(torch.ops.ember, "paged_prefill")


def prefill_covers(q: Tensor) -> bool:
    """Whether the native prefill attention runs for queries like ``q`` (built; on the CPU, float32 or bfloat16: it
    has no CUDA kernel yet)."""
    return has_paged_prefill() and _native(q, "paged_prefill")


def paged_prefill(q: Tensor, k_cache: Tensor, v_cache: Tensor, blocks: Tensor, start: int) -> Tensor:
    """Causal attention of a prefill chunk (``attention._prefill``) reading the context's blocks in place: q [S, H, hd]
    at positions start .. start + S - 1, whose K/V are already in the caches' ``blocks`` [nb] int64."""
    out = q.new_empty(q.shape)
    _ops().paged_prefill(out, q, k_cache, v_cache, blocks, start, q.shape[-1] ** -0.5)
    return out


def time_call(fn: Callable[[], object], budget: float = 0.02) -> float:
    """Seconds per call of fn: the fastest of the calls made in ``budget`` seconds, after one warm-up (what the
    load-time kernel choices compare; the fastest call is the one least disturbed by a shared machine)."""
    fn()
    best, spent = float("inf"), 0.0
    while spent < budget:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
    return best


@functools.cache
def has_quant_linear() -> bool:
    """Whether ``ember._C`` has the weight-only quantized ops (an older build may lack them)."""
    return available() and hasattr(torch.ops.ember, "quant_linear")


@functools.cache
def reads_tiles() -> bool:
    """Whether the quantized kernels here read 8 output rows at once (AVX-512: the integer kernel, and the float one
    at batch 1), which the tiled layout of quant/formats.py serves. The AVX2 float kernel reads 2, for which a tile
    of 8 is a strided walk again: unmeasured, so those CPUs keep rows one after another."""
    return has_quant_linear() and str(torch.ops.ember.cpu_isa()).startswith("avx512")


def quant_kernel(choice: str = "") -> str:
    """Which kernel bfloat16 x on quantized weights takes: "int8" (x rounded to 8 bits per group of 32,
    AVX512-VNNI's dot products on 4 blocks of weights at a time; the default where the CPU has VNNI), "bf16"
    (AVX512-BF16 dot products on x as it is; 4- and 6-bit weights, 8-bit ones take "int") or "int" (x rounded to
    16 bits, VNNI, else the float kernel); ``choice`` "auto", "int8", "bf16" or "int" sets it for the process
    first. Float32 x always takes "int". "" where the extension is not built or predates the choice."""
    if not has_quant_linear() or not hasattr(torch.ops.ember, "quant_kernel"):
        return ""
    return str(_ops().quant_kernel(choice))


def quant_covers(x: Tensor) -> bool:
    """Whether the native quantized linear runs for inputs like ``x`` (built; on the CPU, float32 or bfloat16, or on
    CUDA where the build has its kernel: the decode GEMV)."""
    return has_quant_linear() and _native(x, "quant_linear")


def dequantize_covers(w: QuantizedTensor, dtype: torch.dtype) -> bool:
    """Whether ``dequantize`` runs natively for ``w`` into ``dtype`` (on the CPU, float32 or bfloat16; on CUDA where
    the build has its kernel, float16 too, and only the untiled layout, which is all that reaches a GPU)."""
    device = w.q.device.type
    return has_quant_linear() and _runs_natively(device, dtype, "dequantize") and not (device == "cuda" and w.tiled)


def quant_linear(x: Tensor, w: QuantizedTensor, bias: Tensor | None) -> Tensor:
    """x [M, K] @ W^T (+ bias, float32 [N]) for a quantized W, as [M, N] in x's dtype; W is read as stored."""
    return _quantized_op("quant_linear", x, w, bias)


def _quantized_op(name: str, x: Tensor, w: QuantizedTensor, bias: Tensor | None) -> Tensor:
    out = x.new_empty(x.shape[0], w.shape[0])
    getattr(_ops(), name)(
        out,
        x.contiguous(),
        w.q,
        w.scales,
        w.mins,
        w.super_scales,
        w.super_mins,
        bias,
        w.bits,
        w.group_size,
    )
    return out


@functools.cache
def has_quant_matmul() -> bool:
    """Whether ``ember._C`` has the 8-bit x kernel's matrix product (an older build may lack it)."""
    return has_quant_linear() and hasattr(torch.ops.ember, "quant_matmul")


def quant_matmul_applies(dtype: torch.dtype, w: QuantizedTensor) -> bool:
    """Whether ``quant_matmul`` computes differently from ``quant_linear`` for x of ``dtype`` on ``w``: bfloat16 x on
    the 8-bit x kernel (8-bit weights in groups of 32 only, as that kernel takes them)."""
    return (
        dtype == torch.bfloat16
        and has_quant_matmul()
        and quant_kernel() == "int8"
        and (w.bits != 8 or w.group_size == 32)
    )


def quant_matmul(x: Tensor, w: QuantizedTensor, bias: Tensor | None) -> Tensor:
    """``quant_linear`` for many rows: where bfloat16 x takes the 8-bit x kernel, its matrix product (each strip of
    W unpacked once and swept by every row; the same rounding of x, float32 sums in another order); else the
    same as ``quant_linear``."""
    return _quantized_op("quant_matmul", x, w, bias)


def dequantize(w: QuantizedTensor, dtype: torch.dtype) -> Tensor:
    """W [N, K] in dtype (``dequantize_covers``), natively: what ``quant.formats.dequantize`` computes, faster."""
    out = torch.empty(w.shape, dtype=dtype, device=w.q.device)
    _ops().dequantize(out, w.q, w.scales, w.mins, w.super_scales, w.super_mins, w.bits, w.group_size)
    return out


@functools.cache
def has_decode_stack() -> bool:
    """Whether ``ember._C`` has the native decode step (``torch.classes.ember.DecodeStack``)."""
    if not available():
        return False
    try:
        torch.classes.ember.DecodeStack  # noqa: B018 (the lookup is the check)
    except (AttributeError, RuntimeError):
        return False
    return True


@functools.cache
def has_layer_ops() -> bool:
    """Whether ``ember._C`` has the fused layer ops (RMSNorm, rotary, SiLU-mul)."""
    return available() and hasattr(torch.ops.ember, "silu_mul")


def layer_ops_cover(x: Tensor) -> bool:
    """Whether the native layer ops run for tensors like ``x`` (built; on the CPU, float32 or bfloat16, or on CUDA
    where the build has their kernels)."""
    return has_layer_ops() and _native(x, "silu_mul")


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``model.RMSNorm``'s forward over the last dim, in one call."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    _ops().rms_norm(out, rows, weight, eps)
    return out.view(x.shape)


def add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> None:
    """In place: residual += x, then x = rms_norm(residual) (both contiguous [N, D])."""
    _ops().add_rms_norm(x, residual, weight, eps)


def rotary(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, positions: Tensor) -> None:
    """In place: q [N, H, hd] and k [N, KV, hd] rotated at positions [N] by the tables cos/sin [P, hd]."""
    _ops().rotary(q, k, cos, sin, positions)


@functools.cache
def has_rotary_cache() -> bool:
    """Whether ``ember._C`` has the rotation fused with the cache write (an older build may lack it)."""
    return available() and hasattr(torch.ops.ember, "rotary_cache")


def rotary_cache_covers(q: Tensor) -> bool:
    """Whether ``rotary_cache`` runs natively for queries like ``q`` (as ``layer_ops_cover``)."""
    return has_rotary_cache() and _native(q, "rotary_cache")


def rotary_cache(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cos: Tensor,
    sin: Tensor,
    positions: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    slots: Tensor,
) -> None:
    """In place: ``rotary`` on q and k, then the first ``slots.shape[0]`` tokens' k and v [N, KV, hd] stored in one
    layer's caches [num_blocks, block_size, KV, hd] at their flat slots [n] int64 (``PagedKVCache.write``)."""
    _ops().rotary_cache(q, k, v, cos, sin, positions, k_cache, v_cache, slots)


def silu_mul(gate_up: Tensor) -> Tensor:
    """silu(gate_up[:, :I]) * gate_up[:, I:] for gate_up [N, 2I] (contiguous)."""
    out = gate_up.new_empty(gate_up.shape[0], gate_up.shape[1] // 2)
    _ops().silu_mul(out, gate_up)
    return out
