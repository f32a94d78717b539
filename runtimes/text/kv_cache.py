"""A slot-based KV cache: one preallocated row per running sequence (a paged cache comes later).

Each running sequence owns one slot; its keys and values for position p live at `[layer, slot, :, p]`.
A `KVStep` describes one forward: where its new K/V go and which cached prefix it attends over.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class KVCache:
    """K and V tensors [layers, slots, kv_heads, max_context, head_dim], zero-filled once."""

    def __init__(
        self,
        *,
        layers: int,
        slots: int,
        kv_heads: int,
        max_context: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (layers, slots, kv_heads, max_context, head_dim)
        # NOTE: zeros, not empty: masked-out entries still enter SDPA's matmul with weight 0, and a
        # NaN bit pattern left in uninitialised memory would turn 0 * NaN into NaN.
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.slots = slots
        self.max_context = max_context
        # Column indices 0..max_context-1, reused to build decode masks without allocating an arange per step.
        self._columns = torch.arange(max_context, device=device)

    def prefill_step(self, slot: int, start: int, length: int) -> KVStep:
        """One sequence writing positions start..start+length-1 and attending over 0..start+length-1."""
        end = start + length
        mask = None
        if start > 0:
            # Query i sits at position start + i and sees every cached position up to its own.
            query_pos = torch.arange(start, end, device=self.k.device)
            mask = (self._columns[:end][None, :] <= query_pos[:, None])[None, None]  # [1, 1, S, T]
        return KVStep(cache=self, read=slice(slot, slot + 1), length=end, mask=mask, is_causal=start == 0, start=start)

    def decode_step(self, slots: list[int], positions: list[int]) -> KVStep:
        """One new token per slot, slot i writing at positions[i] and attending over 0..positions[i]."""
        device = self.k.device
        length = max(positions) + 1
        pos = torch.tensor(positions, device=device)
        slot_ids = torch.tensor(slots, device=device)
        # Slots 3,4,5 read as a view; any other set is gathered (a copy of the used prefix).
        first = slots[0]
        contiguous = slots == list(range(first, first + len(slots)))
        read: slice | Tensor = slice(first, first + len(slots)) if contiguous else slot_ids
        mask = None
        if min(positions) != length - 1:
            mask = (self._columns[:length][None, :] <= pos[:, None])[:, None, None, :]  # [B, 1, 1, T]
        return KVStep(
            cache=self, read=read, length=length, mask=mask, is_causal=False, write_slots=slot_ids, write_pos=pos
        )


@dataclass
class KVStep:
    """How one forward uses the cache; shared by all layers of that forward."""

    cache: KVCache
    # Which slots the batch rows are: a slice keeps the cache read a view, a tensor gathers.
    read: slice | Tensor
    # Attend over cached positions 0..length-1 (the longest sequence in the batch), never max_context.
    length: int
    # Boolean [B, 1, S, T] (True = attend), or None when every query sees all `length` positions.
    mask: Tensor | None
    # Prefill from position 0: plain causal attention over the new tokens, no mask tensor.
    is_causal: bool
    # Prefill: the single sequence's new tokens go to positions start..start+S-1.
    start: int = 0
    # Decode: row b's one new token goes to [write_slots[b], :, write_pos[b]].
    write_slots: Tensor | None = None
    write_pos: Tensor | None = None

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new k, v: [B, KV, S, hd] and return the attended prefix [B, KV, T, hd] of each."""
        k_cache, v_cache = self.cache.k[layer], self.cache.v[layer]  # [N, KV, Tmax, hd]
        if self.write_slots is None:
            assert isinstance(self.read, slice)
            end = self.start + k.shape[2]
            k_cache[self.read, :, self.start : end] = k
            v_cache[self.read, :, self.start : end] = v
        else:
            # Advanced indices on dims 0 and 2 around a slice: the indexed view is [B, KV, hd].
            k_cache[self.write_slots, :, self.write_pos] = k[:, :, 0]
            v_cache[self.write_slots, :, self.write_pos] = v[:, :, 0]
        return k_cache[self.read, :, : self.length], v_cache[self.read, :, : self.length]
