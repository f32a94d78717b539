"""Builds the optional native extension ``ember._C`` (Ember's CPU kernels, registered as ``torch.ops.ember``).

Everything else about the distribution is in pyproject.toml. The extension is built only where torch and a C++
compiler are present at build time (``scripts/setup.sh`` installs with ``--no-build-isolation`` after torch); a
build without them, or one whose compile fails, installs without it, and every op falls back to its pure-torch
reference. ``EMBER_NATIVE=0`` skips it on purpose.

Where torch is a CUDA build and a CUDA toolkit is found (``torch.utils.cpp_extension.CUDA_HOME``: nvcc), the same
extension also carries the CUDA kernels of csrc/cuda/, registered for CUDA tensors beside the CPU ones;
``EMBER_CUDA=0`` leaves them out, ``EMBER_CUDA=1`` fails the build where they cannot be built. A CPU install never
needs nvcc; ``scripts/cuda_check.py`` compile-checks the CUDA sources without it.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from setuptools import setup

SOURCES = [
    "csrc/torch_bindings.cpp",
    "csrc/op_checks.cpp",
    "csrc/cpu/decode_stack.cpp",
    "csrc/cpu/isa.cpp",
    "csrc/cpu/layer_ops.cpp",
    "csrc/cpu/paged_attention.cpp",
    "csrc/cpu/quant_linear.cpp",
]
HEADERS = [
    "csrc/op_checks.h",
    "csrc/cpu/isa.h",
    "csrc/cpu/isa_variants.h",
    "csrc/cpu/kernels.h",
    "csrc/cpu/layer_ops_impl.h",
    "csrc/cpu/ops.h",
    "csrc/cpu/paged_attention_impl.h",
    "csrc/cpu/quant_input.h",
    "csrc/cpu/quant_linear_bf16_impl.h",
    "csrc/cpu/quant_linear_gemm_impl.h",
    "csrc/cpu/quant_linear_impl.h",
    "csrc/cpu/quant_linear_int8x_impl.h",
    "csrc/cpu/quant_linear_vnni_impl.h",
    "csrc/cpu/quant_view.h",
    "csrc/cpu/vec_impl.h",
]
CUDA_SOURCES = [
    "csrc/cuda/ops.cpp",
    "csrc/cuda/layer_ops.cu",
    "csrc/cuda/paged_attention.cu",
    "csrc/cuda/quant_linear.cu",
]
CUDA_HEADERS = [
    "csrc/cuda/common.cuh",
    "csrc/cuda/dtype_dispatch.cuh",
    "csrc/cuda/kv_store.h",
    "csrc/cuda/launch.h",
    "csrc/cuda/quant_args.h",
]


def cuda_build() -> bool:
    """Whether to build csrc/cuda/ too: a CUDA build of torch and nvcc, unless EMBER_CUDA=0."""
    wanted = os.environ.get("EMBER_CUDA", "auto")
    if wanted == "0":
        return False
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    if torch.version.cuda is not None and CUDA_HOME is not None:
        return True
    if wanted == "1":
        raise SystemExit(f"EMBER_CUDA=1, but torch {torch.__version__} or nvcc (CUDA_HOME={CUDA_HOME}) lacks CUDA")
    return False


def native_extension() -> dict[str, Any]:
    if os.environ.get("EMBER_NATIVE", "auto") == "0":
        return {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return {}  # an isolated build without torch
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        print("ember: no C++ compiler; building without ember._C", file=sys.stderr)
        return {}

    class OptionalBuild(BuildExtension):
        """A failed compile leaves the extension out (with the reason) instead of failing the install."""

        def build_extension(self, ext: Any) -> None:
            try:
                super().build_extension(ext)
            except Exception as e:  # the compiler's own error is printed above this
                if os.environ.get("EMBER_NATIVE") == "1":
                    raise
                print(f"ember: building {ext.name} failed ({e}); installing without it", file=sys.stderr)

    # -fopenmp: at::parallel_for's OpenMP loop is inline in torch's headers and runs serially without it; the
    # library links libgomp.so.1, which resolves to the one torch has loaded already (one thread pool, not two).
    # gnu++17: GCC's generic vectors and fused multiply-adds, which ISO mode turns off.
    cxx_flags = ["-O3", "-std=gnu++17", "-fopenmp"]
    if cuda_build():
        from torch.utils.cpp_extension import CUDAExtension

        ext = CUDAExtension(
            "ember._C",
            SOURCES + CUDA_SOURCES,
            depends=HEADERS + CUDA_HEADERS,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "ember._C", SOURCES, depends=HEADERS, extra_compile_args=cxx_flags, extra_link_args=["-fopenmp"]
        )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": OptionalBuild}}


setup(**native_extension())
