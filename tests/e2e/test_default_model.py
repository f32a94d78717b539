"""The default chat model, Qwen2.5-Coder-1.5B-Instruct, served end to end as `ember serve` serves it.

The worker loads the default spec unchanged: its 22 part packages joined into the model cache (once; a later run
reuses the checked file) and read as GGUF with its Q4_K / Q6_K weights kept quantized.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from ember.config import DEFAULT_MODEL, load_settings
from ember.config.settings import default_models
from tests.helpers.cluster import GatewayThread, running_worker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def qwen(nats_url: str, gateway: GatewayThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    root = tmp_path_factory.mktemp("default-model")
    # The default model's own entry, untouched (and the default cache dir); every other default model off.
    others = [m for m in default_models() if m != DEFAULT_MODEL]
    config = root / "ember.toml"
    config.write_text("".join(f'[models."{m}"]\nenabled = false\n' for m in others))
    assert load_settings(config).model(DEFAULT_MODEL).parts is not None
    with running_worker(config, DEFAULT_MODEL, nats_url, gateway.url, log=root / "worker.log"):
        yield openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=300)


def ask(client: openai.OpenAI, question: str, max_tokens: int) -> tuple[str, str]:
    r = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
    )
    return r.choices[0].message.content or "", r.choices[0].finish_reason


def test_it_knows_the_capital_of_france(qwen: openai.OpenAI) -> None:
    text, finish = ask(qwen, "What is the capital of France? Answer in one sentence.", 40)
    assert "Paris" in text
    assert finish == "stop"  # it ends on its own <|im_end|>


def test_it_multiplies(qwen: openai.OpenAI) -> None:
    text, _ = ask(qwen, "What is 17 * 23? Reply with the number only.", 12)
    assert "391" in text
