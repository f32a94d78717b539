"""Compile-checks Ember's CUDA sources (csrc/cuda/) where there is no nvcc and no GPU.

    python scripts/cuda_check.py                 # sm_80 and sm_90
    python scripts/cuda_check.py --arch sm_90

The kernels (``*.cu``) go through NVRTC, CUDA's run-time compiler, down to machine code for each architecture
(its ptxas stage reports each kernel's registers and spills): a kernel that does not compile, or that spills
registers to local memory, fails the check. NVRTC compiles device code only, so each .cu file keeps its launchers
under ``#ifndef __CUDACC_RTC__`` and instantiates its kernels for NVRTC otherwise. The op glue (``*.cpp``: tensor
checks, streams, the torch registration) goes through the host compiler against torch's headers and CUDA's runtime
headers (syntax and types; nothing is linked). What stays unchecked here is the launchers' few lines, which only
nvcc compiles (``scripts/gpu_check.sh`` builds everything with it on a GPU machine).

NVRTC and the headers come from NVIDIA's wheels (``pip install ember[cuda-check]``): nvidia-cuda-nvrtc-cu12,
nvidia-cuda-runtime-cu12 (cuda_runtime_api.h, cuda_bf16.h) and nvidia-cuda-nvcc-cu12 (the crt/ headers those
include; that wheel ships ptxas and libNVVM but no nvcc). What the kernels compute is tested apart, by running them
on the CPU (tests/runtimes/text/test_cuda_kernels.py's host backend).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CUDA_SOURCES = ROOT / "csrc" / "cuda"


@dataclass
class KernelStats:
    name: str
    arch: str
    registers: int
    spill_bytes: int


@dataclass
class Report:
    kernels: list[KernelStats] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def nvidia_path(package: str) -> Path:
    """The folder of one of NVIDIA's wheels (nvidia/<package>), or an error saying which wheel is missing."""
    try:
        import nvidia  # type: ignore[import-not-found]
    except ImportError as e:
        raise SystemExit("cuda_check: NVIDIA's CUDA wheels are not installed (pip install 'ember[cuda-check]')") from e
    for base in nvidia.__path__:
        if (Path(base) / package).is_dir():
            return Path(base) / package
    raise SystemExit(f"cuda_check: nvidia/{package} is missing (pip install 'ember[cuda-check]')")


class Nvrtc:
    """NVRTC through ctypes: the calls a compile needs, nothing more."""

    def __init__(self) -> None:
        libs = sorted((nvidia_path("cuda_nvrtc") / "lib").glob("libnvrtc.so*"))
        libs = [lib for lib in libs if "builtins" not in lib.name and ".alt." not in lib.name]
        if not libs:
            raise SystemExit("cuda_check: libnvrtc.so not found in nvidia/cuda_nvrtc/lib")
        self.lib = ctypes.CDLL(str(libs[0]))
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def compile(self, source: str, name: str, options: list[str]) -> tuple[bool, str]:
        """(whether it compiled, the compiler's log)."""
        program = ctypes.c_void_p()
        rc = self.lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(), 0, None, None)
        if rc != 0:
            return False, f"nvrtcCreateProgram: {self.lib.nvrtcGetErrorString(rc).decode()}"
        try:
            args = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
            rc = self.lib.nvrtcCompileProgram(program, len(options), args)
            size = ctypes.c_size_t()
            self.lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            self.lib.nvrtcGetProgramLog(program, log)
            return rc == 0, log.value.decode(errors="replace")
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(program))


# ptxas -v's lines for one kernel: its (mangled) name, then its spills, then its registers.
_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")


def parse_ptxas(log: str) -> list[KernelStats]:
    stats: list[KernelStats] = []
    name = arch = ""
    spill = 0
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            name, arch, spill = m.group(1), m.group(2), 0
        elif (m := _SPILLS.search(line)) and name:
            spill = int(m.group(1)) + int(m.group(2))
        elif (m := _REGISTERS.search(line)) and name:
            stats.append(KernelStats(demangle(name), arch, int(m.group(1)), spill))
            name = ""
    return stats


def demangle(name: str) -> str:
    """The readable name where c++filt is present (binutils), else the mangled one."""
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None:
        return name
    return subprocess.run([cxxfilt, name], capture_output=True, text=True, check=False).stdout.strip() or name


def check_kernels(archs: list[str], sources: Path, report: Report) -> None:
    """Each kernel file for each architecture, compiled side by side (NVRTC programs are independent, and a ctypes
    call lets go of the GIL)."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    nvrtc = Nvrtc()
    runtime_include = nvidia_path("cuda_runtime") / "include"
    jobs = [(source, arch) for source in sorted(sources.glob("*.cu")) for arch in archs]

    # The macros torch's extension build passes nvcc (torch.utils.cpp_extension.COMMON_NVCC_FLAGS): no implicit
    # half/bfloat16 conversions or operators, which code that compiles here must then not use either.
    torch_defines = [f for f in COMMON_NVCC_FLAGS if f.startswith("-D")]

    def compile_one(job: tuple[Path, str]) -> tuple[bool, str]:
        source, arch = job
        options = [f"--gpu-architecture={arch}", "--std=c++17", f"-I{sources}", f"-I{runtime_include}", "-Xptxas=-v"]
        return nvrtc.compile(source.read_text(), source.name, options + torch_defines)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(compile_one, jobs))
    for (source, arch), (ok, log) in zip(jobs, results, strict=True):
        if not ok:
            report.failures.append(f"{source.name} ({arch}) does not compile:\n{log}")
            continue
        stats = parse_ptxas(log)
        if not stats:
            report.failures.append(f"{source.name} ({arch}): NVRTC compiled no kernel (none instantiated?)")
        report.kernels.extend(stats)
        for s in stats:
            if s.spill_bytes:
                report.failures.append(f"{s.name} ({arch}) spills {s.spill_bytes} bytes to local memory")


def check_glue(sources: Path, report: Report) -> None:
    from torch.utils.cpp_extension import include_paths

    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        report.failures.append("no C++ compiler for the op glue (*.cpp)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        # A CPU build of torch ships c10/cuda's headers but not the one its CUDA build generates at configure time;
        # its content there is this line (shared libraries).
        shim = Path(tmp) / "c10" / "cuda" / "impl"
        shim.mkdir(parents=True)
        (shim / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        includes = [tmp, *include_paths(), str(nvidia_path("cuda_runtime") / "include")]
        includes += [str(nvidia_path("cuda_nvcc") / "include"), sysconfig.get_paths()["include"]]
        for source in sorted(sources.glob("*.cpp")):
            command = [cxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wno-unused-function"]
            command += [f"-I{path}" for path in includes] + [str(source)]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            errors = [line for line in result.stderr.splitlines() if "error" in line or "warning: " in line]
            # torch's own headers warn under C++17 (bit-field initializers); only this file's lines count.
            ours = [line for line in errors if str(sources) in line or line.startswith(source.name)]
            if result.returncode != 0 or ours:
                report.failures.append(f"{source.name} does not compile:\n{result.stderr[-4000:]}")


def run(archs: list[str], sources: Path = CUDA_SOURCES) -> Report:
    """Every kernel file of ``sources`` through NVRTC for each of ``archs``, and every glue file through the host
    compiler."""
    report = Report()
    check_kernels(archs, sources, report)
    check_glue(sources, report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", action="append", help="sm_XX to compile for (repeatable; default sm_80, sm_90)")
    args = parser.parse_args()
    report = run(args.arch or ["sm_80", "sm_90"])
    print("| kernel | arch | registers | spilled bytes |\n|---|---|---|---|")
    for s in report.kernels:
        print(f"| {s.name} | {s.arch} | {s.registers} | {s.spill_bytes} |")
    for failure in report.failures:
        print(f"\nFAILED: {failure}", file=sys.stderr)
    print(f"\n{len(report.kernels)} kernel builds, {len(report.failures)} failures")
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
