"""`ModelRunner`: the one interface the engine uses to run the model (prefill one slot, decode a batch)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ember.runtimes.text.config import ModelConfig
from ember.runtimes.text.kv_cache import KVCache
from ember.runtimes.text.model import CausalLM


class ModelRunner:
    """Owns the KV cache and turns token ids into next-token logits.

    Call cycle: the engine gives each new sequence a free slot, calls `prefill` once (or several
    times, in chunks, with increasing `start_pos`) with the prompt, then `decode` once per step
    with the last sampled token of every running sequence. A slot is reused by simply prefilling it
    again from position 0. Called from one thread; not thread-safe.
    """

    def __init__(
        self,
        model: CausalLM,
        config: ModelConfig,
        *,
        max_slots: int,
        max_context: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        if max_slots < 1:
            raise ValueError(f"max_slots={max_slots} must be at least 1")
        if max_context < 1:
            raise ValueError(f"max_context={max_context} must be at least 1")
        self.model = model
        self.config = config
        self.max_slots = max_slots
        self.max_context = max_context
        self.vocab_size = config.vocab_size
        self.device = device
        self.dtype = dtype
        if model.rope_positions < max_context:
            model.setup_rope(max_context)
        self.cache = KVCache(
            layers=config.num_hidden_layers,
            slots=max_slots,
            kv_heads=config.num_key_value_heads,
            max_context=max_context,
            head_dim=config.head_dim,
            device=device,
            dtype=dtype,
        )

    @torch.inference_mode()
    def prefill(self, slot: int, token_ids: Sequence[int], start_pos: int = 0) -> Tensor:
        """Run token_ids at positions start_pos.. for this slot, writing its KV; return float32 logits [V] of
        the LAST position. start_pos>0 continues a chunked prefill."""
        self._check_slot(slot)
        n = len(token_ids)
        if n == 0:
            raise ValueError("prefill needs at least one token")
        if start_pos < 0 or start_pos + n > self.max_context:
            raise ValueError(f"prefill of {n} tokens at start_pos={start_pos} exceeds max_context={self.max_context}")
        ids = torch.tensor([list(token_ids)], device=self.device)  # [1, S]
        positions = torch.arange(start_pos, start_pos + n, device=self.device)[None]  # [1, S]
        step = self.cache.prefill_step(slot, start_pos, n)
        hidden = self.model(ids, positions, step)  # [1, S, D]
        # Only the last position's logits are needed: lm_head over a 49k vocab dominates otherwise.
        return self.model.logits(hidden[0, -1])  # [V]

    @torch.inference_mode()
    def decode(self, slots: Sequence[int], token_ids: Sequence[int], positions: Sequence[int]) -> Tensor:
        """One token per sequence, batched across slots with different lengths (mask positions beyond each slot's
        length); return float32 logits [B, V]."""
        slots, positions = list(slots), list(positions)
        if not (len(slots) == len(token_ids) == len(positions)) or not slots:
            raise ValueError(
                f"decode needs equal, non-empty slots/token_ids/positions; got {len(slots)}/{len(token_ids)}/"
                f"{len(positions)}"
            )
        if len(set(slots)) != len(slots):
            raise ValueError(f"decode got a slot twice: slots={slots}")
        for slot, pos in zip(slots, positions, strict=True):
            self._check_slot(slot)
            if not 0 <= pos < self.max_context:
                raise ValueError(f"position {pos} of slot {slot} is outside max_context={self.max_context}")
        ids = torch.tensor(list(token_ids), device=self.device)[:, None]  # [B, 1]
        step = self.cache.decode_step(slots, positions)
        hidden = self.model(ids, step.write_pos[:, None], step)  # [B, 1, D]
        return self.model.logits(hidden[:, 0])  # [B, V]

    def _check_slot(self, slot: int) -> None:
        """Reject a slot outside 0..max_slots-1."""
        if not 0 <= slot < self.max_slots:
            raise ValueError(f"slot={slot} is outside 0..{self.max_slots - 1}")
