"""Every copy of ember._C's kernels on this one machine: EMBER_CPU_ISA caps the instruction sets the kernels may
use (csrc/cpu/isa.cpp), and the kernel tests run again, in a child process, under each level below the CPU's own.

Why: the dispatcher picks the widest copy the CPU runs, so without the cap a machine with AVX512-BF16 never runs
the copies that CPUs without it take (AVX-512 without VNNI, AVX2, the portable build; bfloat16 decode attention
that converts blocks to float32) and their faults would reach users first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ember.runtimes.text import kernels

BUILT = os.environ.get("EMBER_NATIVE") != "0"
LEVELS = ["baseline", "avx2", "avx512", "avx512+vnni", "avx512+vnni+bf16"]
ROOT = Path(__file__).resolve().parents[3]
# What runs again under each cap: every op against its reference, and the quantized linear's reference test (the
# float kernels of AVX-512 and AVX2; the integer ones with VNNI).
TESTS = [
    "tests/runtimes/text/test_kernels.py",
    "tests/runtimes/text/test_quant.py::test_native_quant_linear_matches_the_reference",
]


def machine_level() -> int:
    return LEVELS.index(str(torch.ops.ember.cpu_isa())) if BUILT and kernels.available() else -1


def run_capped(level: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EMBER_CPU_ISA": level}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def capped_isa(level: str) -> str:
    """The instruction set the kernels report in a child process with EMBER_CPU_ISA=level."""
    probe = run_capped(
        level,
        "-c",
        "import torch, ember.runtimes.text.kernels as k; print(k.available() and torch.ops.ember.cpu_isa())",
    )
    assert probe.returncode == 0, probe.stderr
    return probe.stdout.strip()


@pytest.mark.skipif(not BUILT, reason="EMBER_NATIVE=0: ember._C is left out on purpose")
@pytest.mark.parametrize("level", LEVELS[:-1])
def test_the_kernel_tests_pass_on_every_copy_below_this_cpus(level: str) -> None:
    if LEVELS.index(level) >= machine_level():
        pytest.skip(f"this CPU's own level is {LEVELS[machine_level()]}: the suite itself runs it")
    assert capped_isa(level) == level, "EMBER_CPU_ISA did not cap the kernels' instruction sets"
    result = run_capped(level, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS)
    assert result.returncode == 0, f"kernel tests failed under EMBER_CPU_ISA={level}:\n{result.stdout[-6000:]}"
    assert " passed" in result.stdout and " failed" not in result.stdout


@pytest.mark.skipif(not BUILT, reason="EMBER_NATIVE=0: ember._C is left out on purpose")
def test_an_unknown_cap_leaves_the_cpus_own_level() -> None:
    assert capped_isa("avx9000") == LEVELS[machine_level()]
