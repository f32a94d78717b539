"""Drive a text ModelRunner by hand: sequences get real KV blocks, steps are the chunks a scheduler would make."""

from __future__ import annotations

import torch

from ember.bus.messages import SamplingParams
from ember.runtimes.text.block_pool import BlockPool
from ember.runtimes.text.kv_manager import KVCacheManager
from ember.runtimes.text.loader import LoadedModel
from ember.runtimes.text.request import GenerateRequest, Request
from ember.runtimes.text.runner import CacheConfig, ModelRunner
from ember.runtimes.text.scheduler import ScheduledChunk, SchedulerOutput


def new_runner(
    loaded: LoadedModel,
    *,
    num_blocks: int = 128,
    block_size: int = 4,
    max_context: int = 256,
    max_step_tokens: int = 256,
    max_batch: int = 8,
    dtype: torch.dtype = torch.float32,
    runner_class: type[ModelRunner] = ModelRunner,
    device: str = "cpu",
) -> ModelRunner:
    return runner_class(
        loaded.model,
        loaded.config,
        cache=CacheConfig(num_blocks=num_blocks, block_size=block_size),
        max_context=max_context,
        max_step_tokens=max_step_tokens,
        max_batch=max_batch,
        device=torch.device(device),
        dtype=dtype,
    )


class Driver:
    """Sequences on one runner, their blocks from a real KV cache manager (prefix caching optional)."""

    def __init__(self, runner: ModelRunner, *, caching: bool = False) -> None:
        self.runner = runner
        self.kv = KVCacheManager(BlockPool(runner.cache.num_blocks, runner.block_size), caching=caching)
        self._count = 0

    def sequence(self, prompt_ids: list[int], *, use_cache: bool = False) -> Request:
        self._count += 1
        params = GenerateRequest(f"s{self._count}", list(prompt_ids), SamplingParams(temperature=0), max_tokens=1)
        req = Request(params)
        if use_cache:
            hit = self.kv.lookup(req)
            assert self.kv.allocate(req, 0, hit)
        return req

    def step(self, *chunks: tuple[Request, int]) -> torch.Tensor:
        """Compute each (sequence, n): its next n tokens from where it stands; logits [S, V] of the chunks that
        reach their sequence's last token, in the order given."""
        planned = []
        for req, n in chunks:
            assert self.kv.allocate(req, n), "the pool is full"
            planned.append(ScheduledChunk(req, req.num_computed, n))
        order = sorted(range(len(planned)), key=lambda i: planned[i].num_tokens > 1)
        out = SchedulerOutput(chunks=[planned[i] for i in order])
        logits = self.runner.execute(out)
        for chunk in out.chunks:
            chunk.request.num_computed = chunk.start + chunk.num_tokens
            self.kv.commit(chunk.request)
        # Back to the caller's order.
        rows = [i for i in order if planned[i].samples]
        by_chunk = {i: logits[r] for r, i in enumerate(rows)}
        if not by_chunk:
            return logits  # [0, V]
        return torch.stack([by_chunk[i] for i in range(len(planned)) if i in by_chunk])

    @staticmethod
    def append(req: Request, token: int) -> None:
        req.token_ids.append(token)
