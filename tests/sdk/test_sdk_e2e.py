"""The Ember SDK against the real gateway, NATS and a tiny-model worker."""

from __future__ import annotations

import pytest

import ember
from tests.conftest import TINY

HI = [{"role": "user", "content": "hi"}]


def test_sync_client_round_trip(tiny_worker: str) -> None:
    with ember.Ember(base_url=f"{tiny_worker}/v1", max_retries=0) as client:
        assert TINY in [m.id for m in client.models.list()]
        full = client.chat.completions.create(model=TINY, messages=HI, max_tokens=6, temperature=0)
        assert full.choices[0].message.role == "assistant" and full.usage.completion_tokens <= 6
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(
                model=TINY, messages=HI, max_tokens=6, temperature=0, stream=True
            )
            if chunk.choices
        )
        assert streamed == full.choices[0].message.content
        text = client.completions.create(model=TINY, prompt="abc", max_tokens=3, temperature=0)
        assert text.object == "text_completion" and text._request_id


async def test_async_client_round_trip(tiny_worker: str) -> None:
    async with ember.AsyncEmber(base_url=f"{tiny_worker}/v1", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=TINY, messages=HI, max_tokens=4, temperature=0, stream=True, extra_body={"ignore_eos": True}
        )
        finishes = [c.choices[0].finish_reason async for c in stream if c.choices]
        assert finishes[-1] == "length"


def test_errors_are_typed(tiny_worker: str) -> None:
    client = ember.Ember(base_url=f"{tiny_worker}/v1", max_retries=0)
    with pytest.raises(ember.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=HI)
    assert e.value.code == "model_not_found" and e.value.request_id
    with pytest.raises(ember.BadRequestError) as bad:
        client.chat.completions.create(model=TINY, messages=HI, max_tokens=100_000)
    assert bad.value.code == "context_length_exceeded"
    with pytest.raises(ember.ServiceUnavailableError):
        client.chat.completions.create(model="tiny-unserved", messages=HI)
    client.close()
