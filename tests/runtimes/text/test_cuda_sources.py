"""csrc/cuda/ compile-checked on every run of the suite, where there is no nvcc and no GPU (scripts/cuda_check.py):
each kernel through NVRTC down to Ampere's and Hopper's machine code with no register spills, the op glue through
the host compiler against torch's headers. What the kernels compute is tested by test_cuda_kernels.py (on the CPU
through an emulator, and on a GPU)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[3]


def cuda_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cuda_check", ROOT / "scripts" / "cuda_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


TYPES = ("float", "__nv_bfloat16", "__half")
HALVES = ("__nv_bfloat16", "__half")
# Each kernel with its template arguments as NVRTC instantiates them: per storage type; the quantized ones per bit
# width, the decode GEMVs per rows of x (float32 x in chunks of 8, 4, 2, 1; 16-bit x, rounded to 8 bits, 1 to 8).
PER_TYPE = ["rms_norm_kernel", "add_rms_norm_kernel", "rotary_kernel", "silu_mul_kernel", "paged_decode_kernel"]
PER_TYPE.append("paged_decode_combine")
EXPECTED = [(kernel, t) for kernel in PER_TYPE for t in TYPES]
EXPECTED += [("dequantize_kernel", f"{t}, {bits}") for t in TYPES for bits in (4, 6, 8)]
EXPECTED += [("quant_gemv_kernel", f"float, {bits}, {m}") for bits in (4, 6, 8) for m in (1, 2, 4, 8)]
EXPECTED += [("quant_gemv_q8_kernel", f"{t}, {bits}, {m}") for t in HALVES for bits in (4, 6, 8) for m in range(1, 9)]
EXPECTED += [("quantize_x_kernel", t) for t in HALVES]


def test_every_cuda_kernel_compiles_for_ampere_and_hopper_without_spilling() -> None:
    report = cuda_check().run(["sm_80", "sm_90"])
    assert report.failures == []
    built = set()
    for stats in report.kernels:
        match = re.search(r"cuda::(\w+)<(.*?)>\(", stats.name)
        assert match is not None, stats.name
        built.add((match.group(1), match.group(2), stats.arch))
    assert built == {(kernel, args, arch) for kernel, args in EXPECTED for arch in ("sm_80", "sm_90")}
    assert all(s.spill_bytes == 0 and 0 < s.registers <= 255 for s in report.kernels)


def test_the_check_fails_a_kernel_and_a_glue_file_that_do_not_compile(tmp_path: Path) -> None:
    sources = tmp_path / "cuda"
    shutil.copytree(ROOT / "csrc" / "cuda", sources)
    (sources / "quant_linear.cu").unlink()  # its 72 kernels' build is the other test's; this one wants the failures
    kernel = sources / "layer_ops.cu"
    kernel.write_text(kernel.read_text().replace("rsqrtf(", "rsqrt_of(", 1))
    glue = sources / "ops.cpp"
    glue.write_text(glue.read_text().replace("x.stride(0), weight.data_ptr()", "x.stride(0), weight", 1))
    failures = cuda_check().run(["sm_90"], sources).failures
    assert any(f.startswith("layer_ops.cu (sm_90) does not compile") and "rsqrt_of" in f for f in failures)
    assert any(f.startswith("ops.cpp does not compile") for f in failures)
    assert not any("paged_attention.cu" in f for f in failures)  # a file that compiles still passes
