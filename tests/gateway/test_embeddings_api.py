"""/v1/embeddings against a real embeddings worker process (a tiny random BERT) over NATS: shapes, both encodings,
token ids, inputs through the object store, errors that name the input, usage, and the SDK."""

from __future__ import annotations

import array
import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

import ember
from ember.config import load_settings
from ember.runtimes.embed.loader import load_encoder
from tests.helpers.cluster import GatewayThread, running_worker, write_config
from tests.helpers.fault_stack import usage_records
from tests.helpers.tiny_embedder import write_tiny_embedder

MODEL = "tiny-embed"
MATRYOSHKA = "tiny-embed-matryoshka"
URL = "/v1/embeddings"
TEXTS = ["the quick brown fox", "paris is the capital of france", "hello"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_embedder(tmp_path_factory.mktemp("embed") / "tiny", "bert", max_seq_length=48)


@pytest.fixture(scope="module")
def embed_gateway(model_dir: Path, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Its own gateway (a body limit big enough for inputs that go through the object store) and two workers of
    the same folder, one allowed to shorten vectors."""
    root = tmp_path_factory.mktemp("embed-cluster")
    config = write_config(
        root / "ember.toml",
        {
            MODEL: {"modality": "embed", "path": str(model_dir), "max_batch": 16},
            MATRYOSHKA: {"modality": "embed", "path": str(model_dir), "truncate_dimensions": True},
        },
        gateway={"max_body_bytes": 4 * 1024 * 1024},
        auth={"enabled": False},
    )
    gw = GatewayThread(load_settings(config), nats_url).start()
    try:
        with (
            running_worker(config, MODEL, nats_url, gw.url, log=root / "w1.log", modality="embed", timeout=120),
            running_worker(config, MATRYOSHKA, nats_url, gw.url, log=root / "w2.log", modality="embed", timeout=120),
        ):
            yield gw.url
    finally:
        gw.stop()
    for log in ("w1.log", "w2.log"):
        assert "Traceback" not in (root / log).read_text(), (root / log).read_text()[-4000:]


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> object:
    return load_encoder(model_dir, torch.device("cpu"))


def expected(loaded: object, texts: list[str]) -> np.ndarray:
    from tests.runtimes.embed.test_model import encode

    return encode(loaded, texts).numpy()  # type: ignore[arg-type]


def post(base: str, **body: object) -> httpx.Response:
    return httpx.post(base + URL, json={"model": MODEL, **body}, timeout=60)


def error_of(r: httpx.Response, status: int = 400) -> dict[str, object]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


def test_floats_in_openai_shape(embed_gateway: str, reference: object) -> None:
    r = post(embed_gateway, input=TEXTS)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == MODEL
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in body["data"])
    vectors = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(vectors, expected(reference, TEXTS), atol=1e-5)
    tokens = sum(len(ids) for ids in reference.tokenizer.encode(TEXTS))  # type: ignore[attr-defined]
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert r.headers["x-ember-worker"] and "x-ember-processing-ms" in r.headers


def test_base64_is_the_same_float32_bytes(embed_gateway: str) -> None:
    floats = post(embed_gateway, input=TEXTS).json()["data"]
    encoded = post(embed_gateway, input=TEXTS, encoding_format="base64").json()["data"]
    for f, e in zip(floats, encoded, strict=True):
        assert isinstance(e["embedding"], str)
        decoded = np.frombuffer(base64.b64decode(e["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, np.array(f["embedding"], dtype=np.float32))


def test_a_string_and_token_ids(embed_gateway: str, reference: object) -> None:
    one = post(embed_gateway, input="the quick brown fox").json()
    assert len(one["data"]) == 1
    ids = reference.tokenizer.tokenizer.encode("the quick brown fox", add_special_tokens=False).ids  # type: ignore[attr-defined]
    as_ids = post(embed_gateway, input=ids).json()
    as_lists = post(embed_gateway, input=[ids, ids]).json()
    np.testing.assert_allclose(as_ids["data"][0]["embedding"], one["data"][0]["embedding"], atol=1e-6)
    assert len(as_lists["data"]) == 2 and as_ids["usage"] == one["usage"]


def test_many_inputs_go_through_the_object_store(embed_gateway: str, reference: object) -> None:
    """2,048 inputs of ~300 characters: over half of NATS's 1 MB payload, so the job carries an object name. (Each
    is a few words and one 290-letter word, which WordPiece reads as one [UNK]: the tiny model takes 48 tokens.)"""
    texts = [f"{TEXTS[i % 3]} {i} " + "q" * 290 for i in range(2048)]
    r = post(embed_gateway, input=texts, encoding_format="base64")
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == list(range(2048))
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data[::256]])
    np.testing.assert_allclose(got, expected(reference, texts[::256]), atol=1e-5)


def test_dimensions(embed_gateway: str) -> None:
    full = httpx.post(embed_gateway + URL, json={"model": MATRYOSHKA, "input": TEXTS}, timeout=60).json()["data"]
    short = httpx.post(embed_gateway + URL, json={"model": MATRYOSHKA, "input": TEXTS, "dimensions": 8}, timeout=60)
    assert short.status_code == 200, short.text
    for f, s in zip(full, short.json()["data"], strict=True):
        cut = np.array(f["embedding"][:8])
        np.testing.assert_allclose(s["embedding"], cut / np.linalg.norm(cut), atol=1e-6)
    assert post(embed_gateway, input="x", dimensions=32).status_code == 200  # the model's own size
    error = error_of(post(embed_gateway, input="x", dimensions=8))
    assert error["param"] == "dimensions" and "cannot shorten" in str(error["message"])
    too_many = httpx.post(embed_gateway + URL, json={"model": MATRYOSHKA, "input": "x", "dimensions": 64}, timeout=60)
    assert error_of(too_many)["param"] == "dimensions"


@pytest.mark.parametrize(
    "body, param, words",
    [
        ({"input": ""}, "input", "empty string"),
        ({"input": []}, "input", "empty list"),
        ({"input": ["a", "", "b"]}, "input[1]", "empty string"),
        ({"input": ["a", "   "]}, "input[1]", "empty"),
        ({"input": [[5, 6], []]}, "input[1]", "empty list"),
        ({"input": ["hello"] * 2049}, "input", "at most 2048"),
        ({"input": [[5], [1, 10**6]]}, "input[1]", "token id 1000000"),
        ({"input": [[5], [-1]]}, "input[1]", "token id -1"),
        ({"input": ["a", " ".join(["fox"] * 60)]}, "input[1]", "tokens long; model 'tiny-embed' takes at most 48"),
        ({"input": [True]}, "input", ""),
        ({"input": ["a", 3]}, "input", ""),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format", ""),
    ],
)
def test_bad_inputs_are_named(embed_gateway: str, body: dict[str, object], param: str, words: str) -> None:
    error = error_of(post(embed_gateway, **body))
    assert str(error["param"]).startswith(param) and words in str(error["message"]), error


def test_unknown_model_and_wrong_modality(embed_gateway: str) -> None:
    assert error_of(post(embed_gateway, input="x", model="nope"), 404)["code"] == "model_not_found"


def test_usage_record(embed_gateway: str, nats_url: str) -> None:
    r = post(embed_gateway, input=TEXTS)
    rid = r.headers["x-request-id"]
    records = asyncio.run(usage_records(nats_url, [rid]))[rid]
    assert len(records) == 1
    (rec,) = records
    assert rec.modality == "embed" and rec.model == MODEL and rec.status == "ok"
    assert rec.prompt_tokens == r.json()["usage"]["prompt_tokens"] and rec.completion_tokens == 0


def test_sdk_sync_and_async(embed_gateway: str) -> None:
    with ember.Ember(base_url=embed_gateway + "/v1", api_key="unused") as client:
        floats = client.embeddings.create(model=MODEL, input=TEXTS)
        packed = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="base64")
        with pytest.raises(ember.BadRequestError, match=r"input\[0\]"):
            client.embeddings.create(model=MODEL, input=[""])
    assert len(floats) == 3 and floats.usage.prompt_tokens > 0
    for f, p in zip(floats, packed, strict=True):
        assert p.embedding == list(array.array("f", f.embedding))  # base64 decodes to the same float32 values

    async def run() -> list[float]:
        async with ember.AsyncEmber(base_url=embed_gateway + "/v1", api_key="unused") as aclient:
            result = await aclient.embeddings.create(model=MODEL, input="hello")
            return result.data[0].embedding

    assert len(asyncio.run(run())) == 32
