"""Builds the optional native extension ``ember._C`` (Ember's CPU kernels, registered as ``torch.ops.ember``).

Everything else about the distribution is in pyproject.toml. The extension is built only where torch and a C++
compiler are present at build time (``scripts/setup.sh`` installs with ``--no-build-isolation`` after torch); a
build without them, or one whose compile fails, installs without it, and every op falls back to its pure-torch
reference. ``EMBER_NATIVE=0`` skips it on purpose. Nothing here needs nvcc.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from setuptools import setup

SOURCES = [
    "csrc/torch_bindings.cpp",
    "csrc/cpu/decode_stack.cpp",
    "csrc/cpu/isa.cpp",
    "csrc/cpu/layer_ops.cpp",
    "csrc/cpu/paged_attention.cpp",
    "csrc/cpu/quant_linear.cpp",
]
HEADERS = [
    "csrc/cpu/isa.h",
    "csrc/cpu/isa_variants.h",
    "csrc/cpu/kernels.h",
    "csrc/cpu/layer_ops_impl.h",
    "csrc/cpu/ops.h",
    "csrc/cpu/paged_attention_impl.h",
    "csrc/cpu/quant_input.h",
    "csrc/cpu/quant_linear_bf16_impl.h",
    "csrc/cpu/quant_linear_impl.h",
    "csrc/cpu/quant_linear_vnni_impl.h",
    "csrc/cpu/quant_view.h",
    "csrc/cpu/vec_impl.h",
]


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
    ext = CppExtension(
        "ember._C",
        SOURCES,
        depends=HEADERS,
        extra_compile_args=["-O3", "-std=gnu++17", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": OptionalBuild}}


setup(**native_extension())
