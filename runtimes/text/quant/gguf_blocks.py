"""GGUF quantized tensors repacked into ``QuantizedTensor``s, value for value.

Each function takes a tensor's raw rows (numpy uint8 [N, bytes per row], as ``gguf.GGUFReader`` maps them) and
returns the integers and scales the file holds, moved into the layout of ``formats``: 5- and 6-bit values in its
6-bit layout, so a worker holds about the bytes the file does. No value is recomputed: a K-quant's 6-bit sub-scales
stay integers under their float16 super-scale, so dequantizing gives what llama.cpp's reference dequantization gives
(``tests/runtimes/text/test_quant.py`` checks that against the ``gguf`` package).

Block layouts, from ggml's ggml-common.h (QK = values per block):
    Q4_0  QK 32   f16 d, 16 B nibbles                   w = d (q - 8)
    Q4_1  QK 32   f16 d, f16 m, 16 B nibbles            w = d q + m
    Q5_0  QK 32   f16 d, 4 B high bits, 16 B nibbles    w = d (q - 16)
    Q5_1  QK 32   f16 d, f16 m, 4 B high bits, 16 B     w = d q + m
    Q8_0  QK 32   f16 d, 32 int8                        w = d q
    Q4_K  QK 256  f16 d, f16 dmin, 12 B of 6-bit scales and mins for 8 groups of 32, 128 B nibbles
                  w = d sc q - dmin m
    Q5_K  QK 256  as Q4_K, plus 32 B of fifth bits
    Q6_K  QK 256  128 B low nibbles, 64 B 2-bit highs, int8 scales for 16 groups of 16, f16 d
                  w = d sc (q - 32)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from gguf import GGMLQuantizationType as GT

from ember.runtimes.text.quant.formats import QuantizedTensor, concat_rows, pack_int4, pack_int6

QK_K = 256


def _f16(raw: np.ndarray) -> np.ndarray:
    """Little-endian float16 fields [..., 2] -> float16 [...]."""
    return np.ascontiguousarray(raw).view(np.float16)[..., 0]


def _blocks(raw: np.ndarray, block_bytes: int) -> np.ndarray:
    n = raw.shape[0]
    return np.asarray(raw, dtype=np.uint8).reshape(n, -1, block_bytes)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _nibbles_low_high(qs: np.ndarray) -> np.ndarray:
    """[..., 16] bytes -> [..., 32] values: the low nibbles, then the high ones (Q4_0/Q5_0 order)."""
    return np.concatenate((qs & 15, qs >> 4), axis=-1)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1's 4 bytes of fifth bits [..., 4] -> [..., 32] values 0 or 16 (bit j of the LE word: value j)."""
    return np.unpackbits(qh, axis=-1, bitorder="little") << 4


def _q4_0(raw: np.ndarray, n: int, k: int) -> QuantizedTensor:
    b = _blocks(raw, 18)
    d = _f16(b[..., 0:2])
    return QuantizedTensor(
        shape=(n, k),
        bits=4,
        group_size=32,
        q=_t(b[..., 2:18].reshape(n, k // 2)),
        scales=_t(d),
        mins=_t((d.astype(np.float32) * -8).astype(np.float16)),  # -8 d: exact in float16
        kind="Q4_0",
    )


def _q4_1(raw: np.ndarray, n: int, k: int) -> QuantizedTensor:
    b = _blocks(raw, 20)
    return QuantizedTensor(
        shape=(n, k),
        bits=4,
        group_size=32,
        q=_t(b[..., 4:20].reshape(n, k // 2)),
        scales=_t(_f16(b[..., 0:2])),
        mins=_t(_f16(b[..., 2:4])),
        kind="Q4_1",
    )


def _q5(raw: np.ndarray, n: int, k: int, with_min: bool) -> QuantizedTensor:
    b = _blocks(raw, 24 if with_min else 22)
    at = 4 if with_min else 2
    values = _nibbles_low_high(b[..., at + 4 : at + 20]) | _high_bits(b[..., at : at + 4])  # 0-31
    d = _f16(b[..., 0:2])
    # Q5_0's w = d (q - 16) as the affine map w = d q + (-16 d): -16 d is exact in float16, as Q4_0's -8 d.
    mins = _f16(b[..., 2:4]) if with_min else (d.astype(np.float32) * -16).astype(np.float16)
    if k % 128 == 0:
        q = pack_int6(_t(values.reshape(n, k)))
        bits = 6
    else:  # the 6-bit layout needs whole 128-value blocks; int8 takes any K/32
        q = _t(values.reshape(n, k).astype(np.int8))
        bits = 8
    return QuantizedTensor(
        shape=(n, k),
        bits=bits,
        group_size=32,
        q=q,
        scales=_t(d),
        mins=_t(mins),
        kind="Q5_1" if with_min else "Q5_0",
    )


def _q8_0(raw: np.ndarray, n: int, k: int) -> QuantizedTensor:
    b = _blocks(raw, 34)
    return QuantizedTensor(
        shape=(n, k),
        bits=8,
        group_size=32,
        q=_t(b[..., 2:34].view(np.int8).reshape(n, k)),
        scales=_t(_f16(b[..., 0:2])),
        kind="Q8_0",
    )


def _k_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 bytes [..., 12] -> 6-bit scales and mins [..., 8] (ggml's get_scale_min_k4)."""
    s = packed.astype(np.uint8)
    scales = np.empty((*s.shape[:-1], 8), dtype=np.uint8)
    mins = np.empty_like(scales)
    scales[..., :4] = s[..., 0:4] & 63
    mins[..., :4] = s[..., 4:8] & 63
    scales[..., 4:] = (s[..., 8:12] & 15) | ((s[..., 0:4] >> 6) << 4)
    mins[..., 4:] = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return scales, mins


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K's 128 bytes [..., 128] -> 256 values 0-15: each 32 bytes give 32 values (low nibbles) then 32
    more (high nibbles)."""
    chunks = qs.reshape(*qs.shape[:-1], 4, 32)
    return np.stack((chunks & 15, chunks >> 4), axis=-2).reshape(*qs.shape[:-1], QK_K)


def _q4_k(raw: np.ndarray, n: int, k: int) -> QuantizedTensor:
    b = _blocks(raw, 144)
    scales, mins = _k_scales_mins(b[..., 4:16])
    values = _k_nibbles(b[..., 16:144]).reshape(n, k)
    return QuantizedTensor(
        shape=(n, k),
        bits=4,
        group_size=32,
        q=pack_int4(_t(values)),
        scales=_t(scales.reshape(n, -1).view(np.int8)),  # 0-63: the same numbers as int8
        mins=_t(mins.reshape(n, -1).view(np.int8)),
        super_scales=_t(_f16(b[..., 0:2]).astype(np.float32)),
        super_mins=_t(-_f16(b[..., 2:4]).astype(np.float32)),  # w = d sc q + (-dmin) m
        kind="Q4_K",
    )


def _q5_k(raw: np.ndarray, n: int, k: int) -> QuantizedTensor:
    b = _blocks(raw, 176)
    scales, mins = _k_scales_mins(b[..., 4:16])
    qh = b[..., 16:48]  # bit 2c / 2c + 1 of byte l: the fifth bit of value l of chunk c's low / high half
    shifts = np.arange(8, dtype=np.uint8)
    fifth = ((qh[..., None, :] >> shifts[:, None]) & 1).reshape(*qh.shape[:-1], QK_K)  # [.., 8 groups x 32]
    values = _k_nibbles(b[..., 48:176]) | (fifth << 4)
    return QuantizedTensor(
        shape=(n, k),
        bits=6,  # values 0-31; K is a multiple of 256
        group_size=32,
        q=pack_int6(_t(values.reshape(n, k))),
        scales=_t(scales.reshape(n, -1).view(np.int8)),
        mins=_t(mins.reshape(n, -1).view(np.int8)),
        super_scales=_t(_f16(b[..., 0:2]).astype(np.float32)),
        super_mins=_t(-_f16(b[..., 2:4]).astype(np.float32)),
        kind="Q5_K",
    )


def _q6_k(raw: np.ndarray, n: int, k: int) -> QuantizedTensor:
    b = _blocks(raw, 210)
    ql = b[..., 0:128].reshape(*b.shape[:-1], 2, 64)  # per half of 128 values
    qh = b[..., 128:192].reshape(*b.shape[:-1], 2, 32)
    lo = np.concatenate((ql[..., :32] & 15, ql[..., 32:] & 15, ql[..., :32] >> 4, ql[..., 32:] >> 4), axis=-1)
    hi = np.concatenate(((qh >> 0) & 3, (qh >> 2) & 3, (qh >> 4) & 3, (qh >> 6) & 3), axis=-1)
    values = lo | (hi << 4)  # [.., 2, 128], 0-63: w = d sc (q - 32), the 6-bit layout's zero point
    return QuantizedTensor(
        shape=(n, k),
        bits=6,
        group_size=16,
        q=pack_int6(_t(values.reshape(n, k))),
        scales=_t(b[..., 192:208].view(np.int8).reshape(n, -1)),
        super_scales=_t(_f16(b[..., 208:210]).astype(np.float32)),
        kind="Q6_K",
    )


REPACK: dict[GT, Callable[[np.ndarray, int, int], QuantizedTensor]] = {
    GT.Q4_0: _q4_0,
    GT.Q4_1: _q4_1,
    GT.Q5_0: lambda raw, n, k: _q5(raw, n, k, with_min=False),
    GT.Q5_1: lambda raw, n, k: _q5(raw, n, k, with_min=True),
    GT.Q8_0: _q8_0,
    GT.Q4_K: _q4_k,
    GT.Q5_K: _q5_k,
    GT.Q6_K: _q6_k,
}


def supported(kind: GT) -> bool:
    return kind in REPACK


# Rows repacked at once: the unpacking's intermediates are several times the tensor's size (a 150k-row embedding
# would take gigabytes at once), so big tensors go through in slices.
_ROWS_PER_SLICE = 16384


def repack(kind: GT, raw: np.ndarray, n: int, k: int) -> QuantizedTensor:
    """The GGUF tensor of type ``kind`` with raw rows ``raw`` (uint8 [n, bytes per row]) as a QuantizedTensor."""
    if n <= _ROWS_PER_SLICE:
        return REPACK[kind](raw, n, k)
    slices = [
        REPACK[kind](raw[start : start + _ROWS_PER_SLICE], min(_ROWS_PER_SLICE, n - start), k)
        for start in range(0, n, _ROWS_PER_SLICE)
    ]
    return concat_rows(slices)
