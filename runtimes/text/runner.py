"""`ModelRunner`: one forward per step over the scheduler's flattened batch, on the paged KV cache.

Call cycle (engine thread only): ``execute(scheduler_output)`` turns the step's chunks into input tensors (token
ids, positions, the KV slot of every token, the decode rows' block tables), runs the model once over all of
them, and returns the next-token logits of the chunks that reach their request's last token: one row for each,
or one per position for a chunk that verifies drafted tokens (speculative decoding).

Inputs are written into buffers allocated once at the largest step (``max_step_tokens`` tokens in all, at most
``max_batch`` requests), through numpy views: no tensor is built per step from Python lists, and on a GPU the host
buffers are pinned and copied over without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ember.runtimes.text import kernels
from ember.runtimes.text.attention import AttentionBatch, PagedKVCache, PrefillSpan, decode_mask
from ember.runtimes.text.block_pool import NULL_BLOCK
from ember.runtimes.text.config import ModelConfig
from ember.runtimes.text.decode_stack import NativeDecode
from ember.runtimes.text.model import CausalLM
from ember.runtimes.text.scheduler import SchedulerOutput

# Tokens per KV block unless configured otherwise.
DEFAULT_BLOCK_SIZE = 16


def padded_rows(n: int) -> int:
    """The row count a step of ``n`` tokens (or ``n`` sampled rows) runs at: itself up to 16, then a multiple of 16
    up to 64, then of 64.

    NOTE: oneDNN compiles a kernel for every matmul shape it meets, and for bfloat16 keeps each with its own packed
    copy of the weight: measured on SmolLM2's 1536x576 projection, ~2.7 ms and ~0.7 MiB for every new row count.
    Steps of every size from 1 to 600 tokens grew a worker by hundreds of MiB and stalled it on each new size; these
    buckets bound the sizes to about 30, at the cost of padding rows (at most 63 on a prefill of hundreds).
    """
    if n <= 16:
        return n
    if n <= 64:
        return -(-n // 16) * 16
    return -(-n // 64) * 64


@dataclass(frozen=True)
class CacheConfig:
    num_blocks: int
    block_size: int = DEFAULT_BLOCK_SIZE

    @classmethod
    def from_bytes(
        cls, budget: int, config: ModelConfig, dtype: torch.dtype, block_size: int = DEFAULT_BLOCK_SIZE
    ) -> CacheConfig:
        """As many blocks as ``budget`` bytes hold (K and V of every layer), the null block included."""
        per_block = PagedKVCache.bytes_per_block(
            layers=config.num_hidden_layers,
            block_size=block_size,
            kv_heads=config.num_key_value_heads,
            head_dim=config.head_dim,
            dtype=dtype,
        )
        num_blocks = budget // per_block
        if num_blocks < 2:
            raise ValueError(f"kv_cache_bytes={budget} holds no block of {per_block} bytes for this model")
        return cls(num_blocks=num_blocks, block_size=block_size)

    @property
    def capacity_tokens(self) -> int:
        return (self.num_blocks - 1) * self.block_size


class _HostBuffers:
    """The step's inputs, written through numpy views; on a GPU, pinned and copied to device buffers without waiting
    (the decode step then makes no host sync until the sampler reads its tokens)."""

    def __init__(self, max_tokens: int, max_rows: int, max_blocks: int, device: torch.device) -> None:
        pin = device.type == "cuda"
        shapes = {
            "ids": ((max_tokens,), torch.int64),
            "positions": ((max_tokens,), torch.int64),
            "slots": ((max_tokens,), torch.int64),
            # Per decode row: a single-token chunk's, or one per position of a chunk that verifies drafts.
            "block_table": ((max_tokens, max_blocks), torch.int32),
            "context_lens": ((max_tokens,), torch.int32),
            # The rows whose logits are sampled (every row of a chunk with drafts), and the blocks to zero.
            "sampled_rows": ((max_tokens,), torch.int64),
            "fresh_blocks": ((max_rows,), torch.int64),
        }
        self.host = {name: torch.zeros(shape, dtype=dtype, pin_memory=pin) for name, (shape, dtype) in shapes.items()}
        self.np = {name: t.numpy() for name, t in self.host.items()}
        self.np["block_table"].fill(NULL_BLOCK)
        self._on_device = {name: torch.empty_like(t, device=device) for name, t in self.host.items()} if pin else {}

    def take(self, name: str, *index: slice) -> Tensor:
        """The first entries of a buffer as a tensor on the model's device."""
        host = self.host[name][index]
        if not self._on_device:
            return host.contiguous()  # a copy only for the block table's [rows, width] corner
        device = self._on_device[name][index]
        device.copy_(host, non_blocking=True)
        return device


class ModelRunner:
    """Owns the paged KV cache and turns a SchedulerOutput into next-token logits. Not thread-safe."""

    def __init__(
        self,
        model: CausalLM,
        config: ModelConfig,
        *,
        cache: CacheConfig,
        max_context: int,
        max_step_tokens: int,
        max_batch: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        if max_context < 1:
            raise ValueError(f"max_context={max_context} must be at least 1")
        self.model = model
        self.config = config
        self.vocab_size = config.vocab_size
        self.device = device
        self.dtype = dtype
        self.block_size = cache.block_size
        # No sequence can be longer than the whole pool holds.
        self.max_context = min(max_context, cache.capacity_tokens)
        if model.rope_positions < self.max_context:
            model.setup_rope(self.max_context)
        self.cache = self._new_cache(cache.num_blocks)
        max_blocks = -(-self.max_context // cache.block_size)
        self._buf = _HostBuffers(padded_rows(max_step_tokens), max_batch, max_blocks, device)
        self.max_step_tokens = max_step_tokens
        self.max_batch = max_batch
        self._table_rows = self._table_width = 0
        # A chunk verifying drafts attends as decode rows, one per position, where the native paged decode runs: it
        # reads the context's blocks in place for each (68 us a layer for 5 rows of a 300-token context, SmolLM2
        # shapes) where the prefill path gathers them and runs a masked SDPA (137 us). The torch reference of the
        # decode would gather the context once per row instead: there drafts go the prefill path.
        self.verify_as_decode = kernels.covers(torch.empty(0, dtype=dtype, device=device))
        # Prefill chunks attend in one native call per layer that reads the context where it is: torch's CPU SDPA
        # (its flash kernel) took 31% of a 512-token SmolLM2-135M prefill.
        self.native_prefill = kernels.prefill_covers(torch.empty(0, dtype=dtype, device=device))
        # Steps of decode rows only run through the layers in one native call where the model allows it.
        self.native_decode = NativeDecode.build(model, dtype) if device.type == "cpu" else None

    @property
    def min_cache_blocks(self) -> int:
        """The fewest blocks the cache may shrink to: one sequence of max_context tokens, and the null block (a
        request the worker accepted must always fit, or it would wait forever)."""
        return -(-self.max_context // self.block_size) + 1

    def resize_cache(self, num_blocks: int) -> None:
        """Replace the KV cache by an empty one of ``num_blocks`` blocks (at least ``min_cache_blocks``); every
        block's contents are lost, so no request may hold one (``TextEngine.resize_kv``). Where that much memory
        cannot be had, the cache takes ``min_cache_blocks`` instead, and the error is raised after: the runner
        stays usable either way."""
        if num_blocks < self.min_cache_blocks:
            raise ValueError(f"{num_blocks} KV blocks cannot hold one sequence of max_context={self.max_context}")
        self.cache.release()
        try:
            self.cache = self._new_cache(num_blocks)
        except (torch.OutOfMemoryError, RuntimeError):  # RuntimeError: what the CPU allocator raises
            self.cache = self._new_cache(self.min_cache_blocks)
            raise

    def _new_cache(self, num_blocks: int) -> PagedKVCache:
        return PagedKVCache(
            layers=self.config.num_hidden_layers,
            num_blocks=num_blocks,
            block_size=self.block_size,
            kv_heads=self.config.num_key_value_heads,
            head_dim=self.config.head_dim,
            device=self.device,
            dtype=self.dtype,
        )

    def step_rows(self, n: int) -> int:
        """The rows a step of ``n`` tokens with a prompt chunk runs at (padded_rows), where a step may hold that many
        tokens; the scheduler gives the padding to prompt tokens that wait."""
        return min(padded_rows(n), self.max_step_tokens)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> Tensor:
        """Run the step; float32 logits [S, V] for the chunks that sample (``chunk.samples``), in chunk order:
        ``chunk.num_sampled`` rows each (its last token's, or with drafts, its last token's and each draft's)."""
        batch, ids, positions, last_rows = self._prepare(out)
        s = len(last_rows)
        if self.native_decode is not None and self.native_decode.covers(batch, ids.shape[0]):
            # Every row samples (the usual decode step): the logits come from the same native call.
            hidden, logits = self.native_decode(ids, positions, batch, logits=s == out.num_tokens)  # [N, D], [N, V]
            if logits is not None:
                return logits
        else:
            hidden = self.model(ids, positions, batch)  # [N_padded, D]
        # Only the sampled rows' logits: lm_head over a 49k vocabulary dominates otherwise. Padded like the step.
        rows = last_rows[torch.arange(padded_rows(s), device=last_rows.device).clamp_(max=s - 1)] if s else last_rows
        return self.model.logits(hidden[rows])[:s]  # [S, V]

    def _prepare(self, out: SchedulerOutput) -> tuple[AttentionBatch, Tensor, Tensor, Tensor]:
        buf, bs = self._buf, self.block_size
        n = out.num_tokens
        if n > self.max_step_tokens:
            raise ValueError(f"a step of {n} tokens exceeds max_step_tokens={self.max_step_tokens}")
        decodes = [c for c in out.chunks if c.num_tokens == 1 or (c.draft_ids and self.verify_as_decode)]
        if len(decodes) > self.max_batch:
            raise ValueError(f"{len(decodes)} decode rows exceed max_batch={self.max_batch}")
        if out.chunks[: len(decodes)] != decodes:
            raise ValueError("single-token chunks, then those with drafts, must come first in the step")
        # A step of decode rows alone that the native decode step takes runs at its own row count: the buckets of
        # padded_rows are for the torch model's matmul shapes, which that step never meets, and a padded step is
        # one it does not take (16 SmolLM2 decodes and one draft, 17 rows padded to 32: 122 ms in the torch model,
        # 64 ms for the 16 rows alone on the native step).
        native = self.native_decode is not None and len(decodes) == len(out.chunks) and n < self.native_decode.max_rows
        padded = n if native else padded_rows(n)
        # Padding rows: token 0 at position 0; their K/V are not written and nothing attends to them.
        buf.np["ids"][n:padded] = 0
        buf.np["positions"][n:padded] = 0
        # Rows are rewritten only up to their own length: clear what the last step wrote, so padding is null.
        buf.np["block_table"][: self._table_rows, : self._table_width] = NULL_BLOCK
        row = d = 0
        fresh: list[int] = []
        last_rows: list[int] = []
        max_context = 0
        prefills: list[tuple[int, int, int, list[int]]] = []
        for i, chunk in enumerate(out.chunks):
            req, start, count = chunk.request, chunk.start, chunk.num_tokens
            end = start + count
            if end > self.max_context:
                raise ValueError(f"{req.request_id}: position {end - 1} is beyond max_context={self.max_context}")
            if len(req.block_ids) * bs < end:
                raise ValueError(f"{req.request_id}: {len(req.block_ids)} blocks cannot hold {end} tokens")
            buf.np["ids"][row : row + count] = chunk.token_ids()
            last = (end - 1) // bs * bs
            if end % bs and last >= start:
                # The chunk enters its last block and leaves it part-filled: its unwritten slots are read (masked)
                # until they fill up, and must hold finite numbers, not whatever the memory held.
                fresh.append(req.block_ids[last // bs])
            if count == 1:
                buf.np["positions"][row] = start
                buf.np["slots"][row] = req.block_ids[start // bs] * bs + start % bs
                nb = -(-end // bs)
                buf.np["block_table"][d, :nb] = req.block_ids[:nb]
                buf.np["context_lens"][d] = end
                max_context = max(max_context, end)
                d += 1
            elif i < len(decodes):
                # Drafts to verify: one decode row per position, each seeing the context up to itself.
                pos = np.arange(start, end)
                buf.np["positions"][row : row + count] = pos
                table = np.asarray(req.block_ids, dtype=np.int64)
                buf.np["slots"][row : row + count] = table[pos // bs] * bs + pos % bs
                nb = -(-end // bs)
                buf.np["block_table"][d : d + count, :nb] = table[:nb]
                buf.np["context_lens"][d : d + count] = pos + 1
                max_context = max(max_context, end)
                d += count
            else:
                pos = np.arange(start, end)
                buf.np["positions"][row : row + count] = pos
                table = np.asarray(req.block_ids, dtype=np.int64)
                buf.np["slots"][row : row + count] = table[pos // bs] * bs + pos % bs
                prefills.append((row, count, start, req.block_ids[: -(-end // bs)]))
            row += count
            last_rows.extend(range(row - chunk.num_sampled, row))
        if fresh:
            buf.np["fresh_blocks"][: len(fresh)] = fresh
            self.cache.zero_blocks(buf.take("fresh_blocks", slice(0, len(fresh))))
        batch = AttentionBatch(cache=self.cache, slots=buf.take("slots", slice(0, n)), num_tokens=n, num_decodes=d)
        if d:
            width = -(-max_context // bs)
            batch.block_table = buf.take("block_table", slice(0, d), slice(0, width))
            batch.context_lens = buf.take("context_lens", slice(0, d))
            batch.max_context = max_context
            self._table_rows, self._table_width = d, width
            if (buf.np["context_lens"][:d] != max_context).any():
                batch.decode_mask = decode_mask(batch.context_lens, max_context)
        for row0, count, start, blocks in prefills:
            span = PrefillSpan(rows=slice(row0, row0 + count), start=start, native=self.native_prefill)
            if span.native or start > 0:
                span.blocks = torch.tensor(blocks, dtype=torch.int64, device=self.device)
            if start > 0 and not span.native:
                query_pos = torch.arange(start, start + count, device=self.device)
                span.mask = torch.arange(start + count, device=self.device)[None, :] <= query_pos[:, None]
            batch.prefills.append(span)
        ids = buf.take("ids", slice(0, padded))
        positions = buf.take("positions", slice(0, padded))
        buf.np["sampled_rows"][: len(last_rows)] = last_rows
        rows = buf.take("sampled_rows", slice(0, len(last_rows)))
        return batch, ids, positions, rows
