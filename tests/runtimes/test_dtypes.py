"""Config dtype names, and "auto" resolved from the CPU's flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ember.runtimes.dtypes import cpu_has_native_bf16, resolve_dtype


@pytest.mark.parametrize(
    ("name", "dtype"), [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)]
)
def test_names_map_to_their_dtype(name: str, dtype: torch.dtype) -> None:
    assert resolve_dtype(name) is dtype


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu avx2 avx512f avx512_bf16 avx512_vnni", True),
        ("fpu avx2 amx_tile amx_bf16", True),
        ("fpu avx2 avx512f avx512bw", False),  # AVX-512 alone emulates bfloat16
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, flags: str, native: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_has_native_bf16(cpuinfo) is native


def test_an_unreadable_cpuinfo_means_no_native_bf16(tmp_path: Path) -> None:
    assert cpu_has_native_bf16(tmp_path / "missing") is False


def test_auto_on_cpu_follows_this_machines_flags() -> None:
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype("auto", "cpu") is expected
