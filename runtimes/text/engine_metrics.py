"""The text engine's metric families, read from its counters when a worker is scraped (the step loop only adds
to plain ints): tokens by phase, the KV pool, the prefix cache, speculation and preemptions."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ember.runtimes.text.engine import TextEngine


def text_metrics(engine: TextEngine) -> Iterable[Metric]:
    yield from engine.clock.collect()
    tokens = CounterMetricFamily(
        "ember_text_tokens", "Tokens the model computed, by phase (decode includes draft tokens).", labels=["phase"]
    )
    tokens.add_metric(["prefill"], engine.prefill_tokens)
    tokens.add_metric(["decode"], engine.decode_tokens)
    yield tokens
    yield CounterMetricFamily("ember_text_generated_tokens", "Tokens generated.", value=engine.generated_tokens)
    pool = engine.kv.pool
    blocks = GaugeMetricFamily("ember_text_kv_blocks", "KV cache blocks by state.", labels=["state"])
    idle = pool.num_idle
    blocks.add_metric(["used"], pool.num_blocks - 1 - idle)  # block 0 is never handed out
    blocks.add_metric(["free"], idle)
    yield blocks
    yield GaugeMetricFamily("ember_text_kv_cached_blocks", "Blocks in the prefix index.", value=pool.num_cached)
    scheduler = engine.scheduler
    yield CounterMetricFamily(
        "ember_text_prompt_tokens", "Prompt tokens of admitted requests.", value=scheduler.admitted_prompt_tokens
    )
    yield CounterMetricFamily(
        "ember_text_prefix_cache_hit_tokens",
        "Prompt tokens taken from the prefix cache (hit rate: this over ember_text_prompt_tokens_total).",
        value=scheduler.cached_prompt_tokens,
    )
    yield CounterMetricFamily("ember_text_preemptions", "Requests preempted.", value=scheduler.num_preemptions)
    if engine.speculator is not None:
        spec = CounterMetricFamily(
            "ember_text_spec_tokens", "Draft tokens verified, and accepted (acceptance rate).", labels=["outcome"]
        )
        spec.add_metric(["drafted"], engine.speculator.drafted_tokens)
        spec.add_metric(["accepted"], engine.speculator.accepted_tokens)
        yield spec
