"""Errors and retries: one exception class per status, error events mid-stream, Retry-After, backoff, timeouts."""

from __future__ import annotations

import json
import socket
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

import ember
from ember import _retries
from ember.types import ChatCompletionMessageParam
from tests.sdk.fake_gateway import ServerState

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


def fail(
    status: int, *, times: int | None = None, retry_after: str | None = None, body: str = "json"
) -> dict[str, str]:
    """Headers that make the fake gateway answer ``status`` (for the first ``times`` attempts)."""
    headers = {"x-fail-status": str(status), "x-fail-body": body}
    if times is not None:
        headers["x-fail-times"] = str(times)
    if retry_after is not None:
        headers["x-fail-retry-after"] = retry_after
    return headers


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, ember.BadRequestError),
        (401, ember.AuthenticationError),
        (403, ember.PermissionDeniedError),
        (404, ember.NotFoundError),
        (405, ember.APIStatusError),
        (413, ember.RequestTooLargeError),
        (422, ember.UnprocessableEntityError),
        (429, ember.RateLimitError),
        (500, ember.InternalServerError),
        (502, ember.InternalServerError),
        (503, ember.ServiceUnavailableError),
    ],
)
def test_status_errors(live_url: str, status: int, cls: type[ember.APIStatusError]) -> None:
    with ember.Ember(base_url=live_url, max_retries=0) as client:
        with pytest.raises(cls) as info:
            client.chat.completions.create(model="tiny", messages=MESSAGES, extra_headers=fail(status))
    error = info.value
    assert type(error) is cls
    assert error.status_code == status
    assert error.response.status_code == status
    assert error.message == "injected failure 1"
    assert (error.type, error.code, error.param) == ("test_error", "injected", "model")
    assert error.body == {"message": "injected failure 1", "type": "test_error", "param": "model", "code": "injected"}
    assert error.request_id == "req-1"
    assert str(error) == f"Error code: {status} - injected failure 1 (request id: req-1)"
    assert error.request.url.path == "/v1/chat/completions"


def test_error_without_openai_body(live_url: str) -> None:
    with ember.Ember(base_url=live_url, max_retries=0) as client:
        with pytest.raises(ember.InternalServerError) as html:
            client.models.list(extra_headers=fail(502, body="text"))
        assert html.value.message == "<html>upstream overloaded</html>"
        assert html.value.code is None
        with pytest.raises(ember.NotFoundError) as empty:
            client.models.list(extra_headers=fail(404, body="empty"))
        assert empty.value.message == "Not Found"
        assert empty.value.body is None


def test_rate_limit_retry_honours_retry_after(client: ember.Ember, server_state: ServerState) -> None:
    start = time.monotonic()
    reply = client.chat.completions.create(
        model="tiny", messages=MESSAGES, extra_headers=fail(429, times=1, retry_after="0.2")
    )
    assert reply.choices[0].message.content == "echo: Hi"
    assert server_state.attempts == 2
    assert time.monotonic() - start >= 0.2
    # Every attempt is the same request.
    assert server_state.requests[0].json == server_state.requests[1].json


def test_unavailable_retries_then_succeeds(client: ember.Ember, server_state: ServerState) -> None:
    start = time.monotonic()
    client.models.list(extra_headers=fail(503, times=2, retry_after="0.1"))
    assert server_state.attempts == 3
    assert time.monotonic() - start >= 0.2


@pytest.mark.parametrize("status", [408, 409, 429, 502, 503, 504])
def test_retryable_statuses_back_off_without_retry_after(
    client: ember.Ember, server_state: ServerState, status: int
) -> None:
    client.models.list(extra_headers=fail(status, times=2))
    assert server_state.attempts == 3


def test_retries_run_out(live_url: str, server_state: ServerState) -> None:
    with ember.Ember(base_url=live_url, max_retries=3) as client:
        with pytest.raises(ember.ServiceUnavailableError) as info:
            client.models.list(extra_headers=fail(503, retry_after="0"))
    assert server_state.attempts == 4
    assert info.value.retry_after == 0
    assert info.value.request_id == "req-4"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 500])
def test_other_errors_are_not_retried(client: ember.Ember, server_state: ServerState, status: int) -> None:
    with pytest.raises(ember.APIStatusError):
        client.models.list(extra_headers=fail(status, times=1))
    assert server_state.attempts == 1


def test_a_long_retry_after_is_not_waited_out(client: ember.Ember, server_state: ServerState) -> None:
    start = time.monotonic()
    with pytest.raises(ember.RateLimitError) as info:
        client.models.list(extra_headers=fail(429, retry_after="120"))
    assert time.monotonic() - start < 1
    assert server_state.attempts == 1
    assert info.value.retry_after == 120


def test_stream_request_is_retried_before_it_starts(client: ember.Ember, server_state: ServerState) -> None:
    with client.chat.completions.create(
        model="tiny", messages=MESSAGES, stream=True, extra_headers=fail(429, times=1, retry_after="0.01")
    ) as stream:
        assert "".join(c.choices[0].delta.content or "" for c in stream) == "Hello world"
    assert server_state.attempts == 2


def test_stream_request_error_before_it_starts(live_url: str) -> None:
    with ember.Ember(base_url=live_url, max_retries=0) as client:
        with pytest.raises(ember.AuthenticationError) as info:
            client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True, extra_headers=fail(401))
    assert info.value.message == "injected failure 1"


STREAM_ERRORS = [
    pytest.param(
        {"error": {"message": "worker crashed", "type": "server_error", "code": "worker_failed", "status": 503}},
        ember.ServiceUnavailableError,
        503,
        id="status-field",
    ),
    pytest.param({"error": {"message": "slow down", "type": "rate_limit_error"}}, ember.RateLimitError, 429, id="type"),
    pytest.param({"error": {"message": "bad", "code": 400}}, ember.BadRequestError, 400, id="integer-code"),
    pytest.param({"error": {"message": "???", "code": "weird"}}, ember.InternalServerError, 500, id="nothing-usable"),
]


@pytest.mark.parametrize(("event", "cls", "status"), STREAM_ERRORS)
def test_error_event_mid_stream(
    client: ember.Ember, event: dict[str, object], cls: type[ember.APIStatusError], status: int
) -> None:
    received = []
    stream = client.chat.completions.create(
        model="tiny", messages=MESSAGES, stream=True, extra_headers={"x-stream-error": json.dumps(event)}
    )
    with pytest.raises(cls) as info:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "Hello", " world"]
    error = info.value
    assert type(error) is cls
    assert error.status_code == status
    assert error.response.status_code == 200
    assert error.message == event["error"]["message"]  # type: ignore[index]
    assert error.request_id == "req-1"
    assert stream.response.is_closed


async def test_async_error_event_mid_stream(aclient: ember.AsyncEmber) -> None:
    event = {"error": {"message": "worker crashed", "type": "server_error", "code": "worker_failed", "status": 503}}
    stream = await aclient.chat.completions.create(
        model="tiny", messages=MESSAGES, stream=True, extra_headers={"x-stream-error": json.dumps(event)}
    )
    received = []
    with pytest.raises(ember.ServiceUnavailableError) as info:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "Hello", " world"]
    assert info.value.code == "worker_failed"
    assert stream.response.is_closed


def test_event_that_is_not_json(client: ember.Ember) -> None:
    stream = client.chat.completions.create(
        model="tiny", messages=MESSAGES, stream=True, extra_headers={"x-stream-error": "oops"}
    )
    with pytest.raises(ember.APIResponseValidationError, match="not JSON: 'oops'"):
        list(stream)


def test_response_of_the_wrong_shape(client: ember.Ember) -> None:
    with pytest.raises(ember.APIResponseValidationError, match="not a valid ChatCompletion") as info:
        client.chat.completions.create(model="bad-shape", messages=MESSAGES)
    assert info.value.status_code == 200
    assert info.value.body == {"id": "chatcmpl-1", "object": "chat.completion"}


async def test_async_retry(aclient: ember.AsyncEmber, server_state: ServerState) -> None:
    start = time.monotonic()
    models = await aclient.models.list(extra_headers=fail(429, times=2, retry_after="0.05"))
    assert len(models) == 2
    assert server_state.attempts == 3
    assert time.monotonic() - start >= 0.1


async def test_async_status_error(aclient: ember.AsyncEmber, server_state: ServerState) -> None:
    with pytest.raises(ember.BadRequestError) as info:
        await aclient.chat.completions.create(model="tiny", messages=MESSAGES, extra_headers=fail(400))
    assert info.value.param == "model"
    assert server_state.attempts == 1


def test_timeout(live_url: str, server_state: ServerState) -> None:
    with ember.Ember(base_url=live_url, timeout=0.05, max_retries=1) as client:
        with pytest.raises(ember.APITimeoutError):
            client.models.list(extra_headers={"x-sleep": "0.3"})
        assert len(server_state.requests) == 2  # a timeout is retried
        # A per-call timeout replaces the client's.
        assert len(client.models.list(extra_headers={"x-sleep": "0.1"}, timeout=5)) == 2


class FlakyTransport(httpx.BaseTransport):
    """Refuses the first ``failures`` connections, then passes requests on to a real transport."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self._real = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise httpx.ConnectError("connection refused", request=request)
        return self._real.handle_request(request)

    def close(self) -> None:
        self._real.close()


@pytest.mark.parametrize(("failures", "succeeds"), [(2, True), (3, False)])
def test_connection_errors_are_retried(live_url: str, failures: int, succeeds: bool) -> None:
    transport = FlakyTransport(failures)
    with httpx.Client(transport=transport) as http_client:
        client = ember.Ember(base_url=live_url, max_retries=2, http_client=http_client)
        if succeeds:
            assert len(client.models.list()) == 2
        else:
            with pytest.raises(ember.APIConnectionError) as info:
                client.models.list()
            assert type(info.value) is ember.APIConnectionError
            assert "connection refused" in info.value.message
    assert transport.attempts == 3


def test_nothing_listening() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but never listening: connections are refused
        with ember.Ember(base_url=f"http://127.0.0.1:{port}/v1", max_retries=1) as client:
            with pytest.raises(ember.APIConnectionError):
                client.models.list()


def test_parse_retry_after() -> None:
    def parse(**headers: str) -> float | None:
        return _retries.parse_retry_after(httpx.Headers({k.replace("_", "-"): v for k, v in headers.items()}))

    assert parse() is None
    assert parse(retry_after="2") == 2
    assert parse(retry_after="0.5") == 0.5
    assert parse(retry_after="-3") == 0
    assert parse(retry_after="soon") is None
    assert parse(retry_after="nan") is None
    assert parse(retry_after_ms="250", retry_after="9") == 0.25  # the precise one wins
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    seconds = parse(retry_after=when)
    assert seconds is not None and 28 <= seconds <= 30
    assert parse(retry_after="Wed, 21 Oct 2015 07:28:00 GMT") == 0  # in the past: retry now


def test_backoff_doubles_up_to_a_cap_with_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_retries, "INITIAL_RETRY_DELAY", 0.5)
    monkeypatch.setattr(_retries, "MAX_RETRY_DELAY", 8.0)
    monkeypatch.setattr(_retries.random, "random", lambda: 0.0)
    assert [_retries.backoff(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    monkeypatch.setattr(_retries.random, "random", lambda: 1.0)
    assert [_retries.backoff(n) for n in range(2)] == [0.375, 0.75]  # up to 25% less
