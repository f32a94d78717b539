"""Ember's CUDA launchers and kernels run on the CPU by a SIMT emulator (simt_host.h, cuda_on_host.cpp), with the
signatures of ``ember.runtimes.text.kernels``' ops on CPU tensors: the CPU suite runs the CUDA code's logic (its
indexing, reductions, partitions and formats) where there is no GPU, against the same references as the GPU tests.

Built with the host compiler against CUDA's headers from NVIDIA's wheels (``ember[cuda-check]``), once per session.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

from ember.runtimes.text.quant.formats import QuantizedTensor

ROOT = Path(__file__).resolve().parents[2]
DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # csrc/cuda/launch.h's DType


def build(dest: Path) -> CudaOnHost:
    import nvidia  # type: ignore[import-not-found]  # the ember[cuda-check] wheels

    base = Path(next(iter(nvidia.__path__)))
    library = dest / "cuda_on_host.so"
    includes = [ROOT / "csrc" / "cuda", ROOT / "tests" / "helpers"]
    includes += [base / name / "include" for name in ("cuda_runtime", "cuda_nvcc", "cuda_cccl")]
    # With the macros torch's CUDA build passes (no implicit half/bfloat16 conversions), as scripts/cuda_check.py.
    defines = [f for f in COMMON_NVCC_FLAGS if f.startswith("-D")]
    command = ["c++", "-O1", "-std=c++17", "-shared", "-fPIC", *defines, *(f"-I{p}" for p in includes)]
    subprocess.run([*command, str(ROOT / "tests" / "helpers" / "cuda_on_host.cpp"), "-o", str(library)], check=True)
    return CudaOnHost(library)


def _p(t: Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if t is None else t.data_ptr())


class CudaOnHost:
    """The CUDA ops on CPU tensors (contiguous where the CUDA op wants them so), through the emulator."""

    def __init__(self, library: Path) -> None:
        self.lib = ctypes.CDLL(str(library))

    def _check(self, rc: int, op: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{op}: launch error {rc}")

    def reverse_threads(self, reverse: bool) -> None:
        """Run each block's threads last to first (else first to last)."""
        self.lib.ember_host_reverse_threads(int(reverse))

    def rms_norm(self, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        out = torch.empty(x.shape, dtype=x.dtype)
        rc = self.lib.ember_host_rms_norm(
            DTYPES[x.dtype], _p(out), _p(x), ctypes.c_longlong(x.stride(0)), _p(weight),
            ctypes.c_longlong(x.shape[0]), ctypes.c_longlong(x.shape[1]), ctypes.c_float(eps),
        )  # fmt: skip
        self._check(rc, "rms_norm")
        return out

    def add_rms_norm(self, x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> None:
        rc = self.lib.ember_host_add_rms_norm(
            DTYPES[x.dtype], _p(x), _p(residual), _p(weight), ctypes.c_longlong(x.shape[0]),
            ctypes.c_longlong(x.shape[1]), ctypes.c_float(eps),
        )  # fmt: skip
        self._check(rc, "add_rms_norm")

    def rotary(self, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, positions: Tensor) -> None:
        ll = ctypes.c_longlong
        rc = self.lib.ember_host_rotary(
            DTYPES[q.dtype], _p(q), ll(q.stride(0)), ll(q.shape[1]), _p(k), ll(k.stride(0)), ll(k.shape[1]),
            ll(q.shape[0]), ll(cos.shape[1]), _p(cos), _p(sin), ll(cos.shape[0]), _p(positions),
        )  # fmt: skip
        self._check(rc, "rotary")

    def rotary_cache(self, *tensors: Tensor) -> None:
        """kernels.rotary_cache's arguments: q, k, v, cos, sin, positions, k_cache, v_cache, slots."""
        q, k, v, cos, sin, positions, k_cache, v_cache, slots = tensors
        ll = ctypes.c_longlong
        rc = self.lib.ember_host_rotary_cache(
            DTYPES[q.dtype], _p(q), ll(q.stride(0)), ll(q.shape[1]), _p(k), ll(k.stride(0)), ll(k.shape[1]),
            ll(q.shape[0]), ll(cos.shape[1]), _p(cos), _p(sin), ll(cos.shape[0]), _p(positions), _p(v),
            ll(v.stride(0)), _p(k_cache), _p(v_cache), _p(slots), ll(slots.shape[0]),
            ll(k_cache.shape[0] * k_cache.shape[1]),
        )  # fmt: skip
        self._check(rc, "rotary_cache")

    def silu_mul(self, gate_up: Tensor) -> Tensor:
        out = gate_up.new_empty(gate_up.shape[0], gate_up.shape[1] // 2)
        rc = self.lib.ember_host_silu_mul(
            DTYPES[gate_up.dtype], _p(out), _p(gate_up), ctypes.c_longlong(out.shape[0]),
            ctypes.c_longlong(out.shape[1]),
        )  # fmt: skip
        self._check(rc, "silu_mul")
        return out

    def paged_decode(self, q: Tensor, k: Tensor, v: Tensor, table: Tensor, lens: Tensor) -> Tensor:
        out = torch.empty_like(q)
        ll = ctypes.c_longlong
        batch, heads, head_dim = q.shape
        rc = self.lib.ember_host_paged_decode(
            DTYPES[q.dtype], _p(out), _p(q), _p(k), _p(v), _p(table), _p(lens), ll(batch), ll(heads),
            ll(k.shape[2]), ll(head_dim), ll(k.shape[0]), ll(k.shape[1]), ll(table.shape[1]),
            ctypes.c_float(head_dim**-0.5),
        )  # fmt: skip
        self._check(rc, "paged_decode")
        return out

    def _weight(self, w: QuantizedTensor) -> list[object]:
        ll = ctypes.c_longlong
        supers = 0 if w.super_scales is None else w.super_scales.shape[1]
        pointers = [_p(t) for t in (w.q, w.scales, w.mins, w.super_scales, w.super_mins)]
        return [pointers, ll(w.shape[0]), ll(w.shape[1]), ll(w.row_bytes), w.bits, w.groups, w.group_size, supers,
                w.zero_point]  # fmt: skip

    def quant_linear(self, x: Tensor, w: QuantizedTensor, bias: Tensor | None) -> Tensor:
        out = x.new_empty(x.shape[0], w.shape[0])
        pointers, *sizes = self._weight(w)
        rc = self.lib.ember_host_quant_linear(
            DTYPES[x.dtype], _p(out), _p(x), ctypes.c_longlong(x.shape[0]), *pointers, _p(bias), *sizes
        )
        self._check(rc, "quant_linear")
        return out

    def dequantize(self, w: QuantizedTensor, dtype: torch.dtype) -> Tensor:
        out = torch.empty(w.shape, dtype=dtype)
        pointers, *sizes = self._weight(w)
        self._check(self.lib.ember_host_dequantize(DTYPES[dtype], _p(out), *pointers, *sizes), "dequantize")
        return out
