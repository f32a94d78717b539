"""``QuantizedTensor``: a weight-only quantized matrix in the layout ``ember._C``'s kernels read (csrc/cpu/
quant_view.h), and ``dequantize``, its pure-torch reference.

W [N, K] is stored as integers q in groups of ``group_size`` consecutive values of a row, each group with an affine
map w = s * q + m:

- 4 bits: ``q`` is uint8 [N, K/2]; a group of 32 takes 16 bytes, byte j holding value j in its low nibble and
  value j + 16 in its high one (GGUF's own Q4_0/Q4_1 order, so those repack without shuffling).
- 6 bits (GGUF's Q6_K, and Q5_0, Q5_1, Q5_K, whose 5-bit values fit too): ``q`` is uint8 [N, 3K/4], values 0-63. A row
  holds the low nibbles of its K values first (K/2 bytes, exactly the 4-bit layout), then their top 2 bits (K/4
  bytes): per 128 values (64 nibble bytes, byte p holding value lo(p) = 32 (p // 16) + p % 16 low and lo(p) + 16
  high), 32 bytes whose byte c holds in bits 0-1, 2-3, 4-5, 6-7 the top bits of values lo(c), lo(c + 32),
  lo(c) + 16, lo(c + 32) + 16. The integer kernel turns 64 nibble bytes and their 32 top-bit bytes into two
  vectors of 6-bit bytes with a few shifts and masks (quant_linear_vnni_impl.h). K must be a multiple of 128.
  Groups of 16 (Q6_K) are centred at 32, Q6_K's own convention: w = s (q - 32), the implicit ``zero_point``,
  since the min -32 s does not fit the int8 sub-scales.
- 8 bits: ``q`` is int8 [N, K] (Q8_0, and Q5_0/Q5_1 when K is no multiple of 128).
- One level of scales: ``scales`` and ``mins`` are float16 [N, G], as in Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
- Two levels (the K-quants): ``scales``/``mins`` are int8 [N, G] and each is multiplied by a float32
  ``super_scales``/``super_mins`` [N, S] shared by G / S consecutive groups (a 256-value super-block).

``q`` in any of these may also be **tiled** (``QuantizedTensor.tile``): [N/8, B, 8, U], the same bytes regrouped
so that 8 consecutive rows are one contiguous run a kernel reads front to back. Each row is cut in B blocks of U
bytes (64; for 6 bits 96: 64 bytes of nibbles, then the 32 bytes of their top bits), and a tile holds block 0 of
its 8 rows, block 1 of them, and so on. The streaming kernel reads 8 rows at once, and from 8 rows a row's length
apart the hardware prefetcher fetches too late: on Qwen2.5-Coder-1.5B the tiled gate/up matrix reads at 2.6x the
bandwidth on one thread (csrc/cpu/quant_view.h). The loader tiles the matrices the kernel multiplies; every
method here takes either layout.

Every product s * q of the formats GGUF writes is exact in float32, so dequantizing here gives the very values
llama.cpp's reference dequantization gives, and the kernel multiplies with them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass
class QuantizedTensor:
    shape: tuple[int, int]  # (N, K): out_features, in_features
    bits: int  # 4, 6 or 8
    group_size: int  # 32, or 16 (Q6_K)
    q: Tensor
    scales: Tensor  # float16 [N, G], or int8 [N, G] with super_scales
    mins: Tensor | None = None
    super_scales: Tensor | None = None  # float32 [N, S]
    super_mins: Tensor | None = None
    # Where the values came from ("Q4_K", "int8", ...), for logs and the loader's summary.
    kind: str = ""

    def __post_init__(self) -> None:
        n, k = self.shape
        if self.bits not in (4, 6, 8) or k % self.group_size or (self.bits == 6 and k % 128):
            raise ValueError(f"unsupported layout: {self.bits} bits, groups of {self.group_size}, K={k}")
        want: tuple[int, ...] = (n, self.row_bytes)
        if self.tiled:
            unit = tiled_block_bytes(self.bits)
            want = (n // TILE_ROWS, self.row_bytes // unit, TILE_ROWS, unit)
            if not self.tileable:
                raise ValueError(f"a {n} x {k} matrix at {self.bits} bits cannot be tiled")
        if tuple(self.q.shape) != want:
            raise ValueError(f"q has shape {tuple(self.q.shape)}, expected {want}")

    @property
    def row_bytes(self) -> int:
        return self.shape[1] * self.bits // 8

    @property
    def tiled(self) -> bool:
        """Whether q is in the tiled layout (the module docstring)."""
        return self.q.dim() == 4

    @property
    def tileable(self) -> bool:
        """Whether the tiled layout holds this matrix: whole tiles of rows, and rows of whole blocks."""
        return self.shape[0] % TILE_ROWS == 0 and self.row_bytes % tiled_block_bytes(self.bits) == 0

    def tile(self) -> QuantizedTensor:
        """The same matrix with q tiled (itself when it is already, or cannot be)."""
        if self.tiled or not self.tileable:
            return self
        return replace(self, q=_tile_q(self.q, self.bits, self.shape[1]))

    def untile(self) -> QuantizedTensor:
        """The same matrix with q one row after another (itself when it is)."""
        if not self.tiled:
            return self
        return replace(self, q=_untile_q(self.q, self.bits, self.shape[1]))

    def to(self, device: torch.device | str) -> QuantizedTensor:
        """The same matrix with its tensors on ``device``."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            q=self.q.to(device),
            scales=self.scales.to(device),
            mins=move(self.mins),
            super_scales=move(self.super_scales),
            super_mins=move(self.super_mins),
        )

    @property
    def groups(self) -> int:
        return self.shape[1] // self.group_size

    @property
    def zero_point(self) -> int:
        """The integer every group is centred at (w = s (q - zero_point) + m): 32 for 6-bit groups of 16 (Q6_K)."""
        return 32 if (self.bits, self.group_size) == (6, 16) else 0

    @property
    def nbytes(self) -> int:
        """Bytes the weight takes (what a forward reads)."""
        parts = (self.q, self.scales, self.mins, self.super_scales, self.super_mins)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    def tensors(self) -> dict[str, Tensor]:
        """The stored tensors by name (absent ones left out)."""
        named = {
            "qweight": self.q,
            "scales": self.scales,
            "mins": self.mins,
            "super_scales": self.super_scales,
            "super_mins": self.super_mins,
        }
        return {name: t for name, t in named.items() if t is not None}

    def layout(self) -> tuple[object, ...]:
        """What must match for two tensors' rows to be stacked into one (concat_rows)."""
        parts = (self.scales, self.mins, self.super_scales, self.super_mins)
        per_super = None if self.super_scales is None else self.groups // self.super_scales.shape[1]
        return (self.bits, self.group_size, self.shape[1], per_super, *(None if t is None else t.dtype for t in parts))

    def rows(self, index: Tensor) -> QuantizedTensor:
        """The rows ``index`` (an embedding lookup), as a smaller QuantizedTensor."""

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.index_select(0, index)

        if self.tiled:  # the tiles holding the rows, untiled, then the rows in them
            tiles = _untile_q(self.q.index_select(0, index // TILE_ROWS), self.bits, self.shape[1])
            q = tiles.view(index.numel(), TILE_ROWS, -1)[torch.arange(index.numel()), index % TILE_ROWS]
        else:
            q = self.q.index_select(0, index)
        return QuantizedTensor(
            shape=(index.numel(), self.shape[1]),
            bits=self.bits,
            group_size=self.group_size,
            q=q,
            scales=self.scales.index_select(0, index),
            mins=pick(self.mins),
            super_scales=pick(self.super_scales),
            super_mins=pick(self.super_mins),
            kind=self.kind,
        )

    def permute_rows(self, order: Tensor) -> QuantizedTensor:
        """Rows reordered (llama.cpp's rotary permutation undone): rows are independent in every format."""
        return self.rows(order)


def concat_rows(parts: list[QuantizedTensor]) -> QuantizedTensor:
    """The matrices of ``parts`` (one layout) stacked: rows of the first, then of the next... (untiled)"""
    parts = [p.untile() for p in parts]

    def cat(name: str) -> Tensor | None:
        tensors = [getattr(p, name) for p in parts]
        return None if tensors[0] is None else torch.cat(tensors)

    first = parts[0]
    scales = cat("scales")
    assert scales is not None
    return QuantizedTensor(
        shape=(sum(p.shape[0] for p in parts), first.shape[1]),
        bits=first.bits,
        group_size=first.group_size,
        q=torch.cat([p.q for p in parts]),
        scales=scales,
        mins=cat("mins"),
        super_scales=cat("super_scales"),
        super_mins=cat("super_mins"),
        kind=first.kind,
    )


# Rows per tile of the tiled layout (csrc/cpu/quant_view.h's kTileRows).
TILE_ROWS = 8


def tiled_block_bytes(bits: int) -> int:
    """The bytes one row takes in one block of the tiled layout: 64, or for 6 bits 64 of nibbles + 32 of top bits."""
    return 96 if bits == 6 else 64


def _tile_q(q: Tensor, bits: int, k: int) -> Tensor:
    """Row-major q [N, row bytes] -> tiled [N/8, B, 8, U]."""
    n = q.shape[0]
    unit = tiled_block_bytes(bits)
    if bits == 6:  # each 64-byte block of nibbles joined by its 32 bytes of top bits
        blocks = torch.cat((q[:, : k // 2].reshape(n, -1, 64), q[:, k // 2 :].reshape(n, -1, 32)), dim=2)
    else:
        blocks = q.reshape(n, -1, unit)
    return blocks.view(n // TILE_ROWS, TILE_ROWS, -1, unit).transpose(1, 2).contiguous()


def _untile_q(q: Tensor, bits: int, k: int) -> Tensor:
    """Tiled q [T, B, 8, U] -> row-major [8 T, row bytes]."""
    tiles, blocks, rows, unit = q.shape
    by_row = q.transpose(1, 2).reshape(tiles * rows, blocks, unit)
    if bits == 6:
        return torch.cat((by_row[..., :64].reshape(-1, k // 2), by_row[..., 64:].reshape(-1, k // 4)), dim=1)
    return by_row.reshape(tiles * rows, blocks * unit)


def unpack_int4(q: Tensor, shape: tuple[int, int]) -> Tensor:
    """uint8 [N, K/2] -> uint8 [N, K]: each group's 16 bytes give values 0-15 (low nibbles), then 16-31 (high)."""
    n, k = shape
    grouped = q.view(n, k // 32, 16)
    return torch.cat((grouped & 15, grouped >> 4), dim=2).view(n, k)


def pack_int4(values: Tensor) -> Tensor:
    """uint8 [N, K] of values 0-15 -> the packed uint8 [N, K/2] (the inverse of unpack_int4)."""
    n, k = values.shape
    grouped = values.view(n, k // 32, 32)
    return (grouped[:, :, :16] | (grouped[:, :, 16:] << 4)).reshape(n, k // 2).contiguous()


# The value each top-bit field of a 128-value block holds, at [32 f + c] for field f (bits 2f, 2f + 1) of byte c:
# fields 0 and 1 belong to nibble bytes c and c + 32, low nibbles; fields 2 and 3 to the same bytes' high nibbles.
_NIBBLE_BYTE = torch.arange(64).repeat(2)
_TOP_ORDER = 32 * (_NIBBLE_BYTE // 16) + _NIBBLE_BYTE % 16 + 16 * (torch.arange(128) >= 64)
_FIELD_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)


def unpack_int6(q: Tensor, shape: tuple[int, int]) -> Tensor:
    """uint8 [N, 3K/4] -> uint8 [N, K] of values 0-63 (the 6-bit layout)."""
    n, k = shape
    low = unpack_int4(q[:, : k // 2].contiguous(), shape)
    plane = q[:, k // 2 :].reshape(n, k // 128, 1, 32)
    fields = (plane >> _FIELD_SHIFTS.to(q.device)[:, None]) & 3  # [N, B, 4, 32]
    top = torch.empty(n, k // 128, 128, dtype=torch.uint8, device=q.device)
    top[..., _TOP_ORDER.to(q.device)] = fields.reshape(n, k // 128, 128)
    return low | (top.view(n, k) << 4)


def pack_int6(values: Tensor) -> Tensor:
    """uint8 [N, K] of values 0-63 -> the packed uint8 [N, 3K/4] (the inverse of unpack_int6)."""
    n, k = values.shape
    fields = (values.view(n, k // 128, 128) >> 4)[..., _TOP_ORDER.to(values.device)].view(n, k // 128, 4, 32)
    plane = fields[:, :, 0] | (fields[:, :, 1] << 2) | (fields[:, :, 2] << 4) | (fields[:, :, 3] << 6)
    return torch.cat((pack_int4(values & 15), plane.reshape(n, k // 4)), dim=1)


def group_maps(t: QuantizedTensor) -> tuple[Tensor, Tensor | None]:
    """Each group's scale and min, float32 [N, G] (mins None when every group's min is 0).

    A zero point z enters as the min -z s: exact in float32 (z is a power of two), and so is s q - z s, since both
    products are exact and their sum s (q - z) is a float32 too.
    """
    if t.super_scales is None:
        scales, mins = t.scales.float(), None if t.mins is None else t.mins.float()
    else:
        per_super = t.groups // t.super_scales.shape[1]
        scales = t.super_scales.repeat_interleave(per_super, dim=1) * t.scales.float()
        mins = None
        if t.mins is not None:
            assert t.super_mins is not None
            mins = t.super_mins.repeat_interleave(per_super, dim=1) * t.mins.float()
    if t.zero_point:
        offset = scales * -t.zero_point
        mins = offset if mins is None else mins + offset
    return scales, mins


def dequantize(t: QuantizedTensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """W [N, K] in dtype: the reference the native kernels are tested against."""
    n, k = t.shape
    t = t.untile()
    q = unpack_int4(t.q, t.shape) if t.bits == 4 else unpack_int6(t.q, t.shape) if t.bits == 6 else t.q
    scales, mins = group_maps(t)
    w = q.view(n, t.groups, t.group_size).float() * scales[..., None]
    if mins is not None:
        w = w + mins[..., None]
    return w.view(n, k).to(dtype)
