"""Client configuration, the headers every request carries, ownership of the HTTP client, and ``client.models``."""

from __future__ import annotations

import httpx
import pytest

import ember
from ember.types import Model, ModelList
from tests.sdk.fake_gateway import ServerState


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_BASE_URL", "https://ember.example.com/v1/")
    monkeypatch.setenv("EMBER_API_KEY", "sk-env")
    with ember.Ember() as client:
        assert str(client.base_url) == "https://ember.example.com/v1/"
        assert client.api_key == "sk-env"
        assert client.max_retries == ember.DEFAULT_MAX_RETRIES
        assert client.timeout == ember.DEFAULT_TIMEOUT


def test_defaults_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBER_BASE_URL", raising=False)
    monkeypatch.setenv("EMBER_API_KEY", "")  # an empty key is no key
    with ember.Ember() as client:
        assert str(client.base_url) == "http://127.0.0.1:8000/v1/"
        assert client.api_key is None


def test_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_BASE_URL", "https://env.example.com/v1")
    monkeypatch.setenv("EMBER_API_KEY", "sk-env")
    with ember.Ember(base_url="http://other:9000/v1", api_key="sk-arg") as client:
        assert str(client.base_url) == "http://other:9000/v1/"
        assert client.api_key == "sk-arg"
        assert "sk-arg" not in repr(client)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_retries": -1}, "max_retries=-1"), ({"base_url": "ftp://host/v1"}, "base_url='ftp://host/v1'")],
)
def test_invalid_configuration_is_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ember.Ember(**kwargs)  # type: ignore[arg-type]


def test_request_headers(client: ember.Ember, server_state: ServerState) -> None:
    client.models.list()
    headers = server_state.last.headers
    assert headers["authorization"] == "Bearer sk-test"
    assert headers["accept"] == "application/json"
    assert headers["user-agent"] == f"ember-python/{ember.__version__}"


def test_no_authorization_header_without_a_key(
    live_url: str, server_state: ServerState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EMBER_API_KEY", raising=False)
    with ember.Ember(base_url=live_url) as client:
        client.models.list()
    assert "authorization" not in server_state.last.headers


def test_default_headers_and_extra_headers(live_url: str, server_state: ServerState) -> None:
    default_headers = {"x-team": "search", "X-Request-Id": "from-default"}
    with ember.Ember(base_url=live_url, api_key="sk-test", default_headers=default_headers) as client:
        client.models.list()
        assert server_state.last.headers["x-team"] == "search"
        assert server_state.last.headers["x-request-id"] == "from-default"
        # Per-call headers replace the client's, case-insensitively; Authorization can be overridden too.
        client.models.list(extra_headers={"x-request-id": "per-call", "authorization": "Bearer other"})
        assert server_state.last.headers["x-request-id"] == "per-call"
        assert server_state.last.headers["authorization"] == "Bearer other"
        assert server_state.last.headers["x-team"] == "search"


def test_models_list_and_retrieve(client: ember.Ember, server_state: ServerState) -> None:
    models = client.models.list()
    assert isinstance(models, ModelList)
    assert [m.id for m in models] == ["tiny", "org/tiny-chat"]
    assert len(models) == 2
    assert models.data[0].context_length == 2048  # type: ignore[attr-defined]  # an extension field is kept
    assert models._request_id == "req-1"
    model = client.models.retrieve("org/tiny-chat")
    assert isinstance(model, Model)
    assert model.owned_by == "ember"
    assert server_state.last.path == "/v1/models/org/tiny-chat"


def test_models_retrieve_unknown(client: ember.Ember) -> None:
    with pytest.raises(ember.NotFoundError) as info:
        client.models.retrieve("nope")
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"
    with pytest.raises(ValueError, match="model=''"):
        client.models.retrieve("")


async def test_async_models(aclient: ember.AsyncEmber, server_state: ServerState) -> None:
    assert [m.id for m in await aclient.models.list()] == ["tiny", "org/tiny-chat"]
    assert (await aclient.models.retrieve("tiny")).id == "tiny"
    assert server_state.last.headers["authorization"] == "Bearer sk-test"


def test_injected_http_client_is_used_and_left_open(live_url: str, server_state: ServerState) -> None:
    with httpx.Client(headers={"x-from-http-client": "yes"}) as http_client:
        with ember.Ember(base_url=live_url, http_client=http_client) as client:
            client.models.list()
        assert server_state.last.headers["x-from-http-client"] == "yes"
        assert not http_client.is_closed  # the caller's to close
        # ... and still usable by another client.
        ember.Ember(base_url=live_url, http_client=http_client).models.list()


def test_close_closes_the_client_it_made(live_url: str) -> None:
    client = ember.Ember(base_url=live_url)
    client.models.list()
    client.close()
    assert client._client.is_closed


async def test_async_close_closes_the_client_it_made() -> None:
    async with ember.AsyncEmber(base_url="http://127.0.0.1:1/v1") as client:
        pass
    assert client._client.is_closed


def test_public_names() -> None:
    for name in ember.__all__:
        assert hasattr(ember, name), name
    assert issubclass(ember.APITimeoutError, ember.APIConnectionError)
    assert issubclass(ember.ServiceUnavailableError, ember.InternalServerError)
    assert issubclass(ember.RateLimitError, ember.APIStatusError)
    assert issubclass(ember.APIError, ember.EmberError)
