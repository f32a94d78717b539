"""``client.audio.speech``: text to speech, as a file (``create``) or as it is made (``with_streaming_response``).

``stream_format="sse"`` returns a ``Stream`` of ``SpeechStreamEvent`` instead: base64 pieces of the file, then the
usage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, overload

from .._base_client import AsyncAPIClient, SyncAPIClient
from .._resource import AsyncAPIResource, SyncAPIResource, request_options
from .._response import (
    AsyncBinaryResponseContent,
    AsyncStreamedResponseManager,
    BinaryResponseContent,
    StreamedResponseManager,
)
from .._streaming import AsyncStream, Stream
from .._types import NOT_GIVEN, Headers, NotGiven, Timeout
from ..types.audio import SpeechResponseFormat, SpeechStreamEvent

__all__ = ["AsyncSpeech", "Speech"]

PATH = "audio/speech"


def _body(
    model: str,
    input: str,
    voice: str,
    instructions: str | None,
    response_format: SpeechResponseFormat | None,
    speed: float | None,
    stream_format: str | None,
    extra_body: Mapping[str, Any] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": input, "voice": voice}
    optional = {
        "instructions": instructions,
        "response_format": response_format,
        "speed": speed,
        "stream_format": stream_format,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    body.update(extra_body or {})
    return body


class Speech(SyncAPIResource):
    """``client.audio.speech``."""

    def __init__(self, client: SyncAPIClient) -> None:
        super().__init__(client)
        self.with_streaming_response = SpeechWithStreamingResponse(client)

    @overload
    def create(
        self,
        *,
        model: str,
        input: str,
        voice: str,
        instructions: str | None = None,
        response_format: SpeechResponseFormat | None = None,
        speed: float | None = None,
        stream_format: Literal["audio"] | None = None,
        extra_headers: Headers | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> BinaryResponseContent: ...

    @overload
    def create(
        self,
        *,
        model: str,
        input: str,
        voice: str,
        instructions: str | None = None,
        response_format: SpeechResponseFormat | None = None,
        speed: float | None = None,
        stream_format: Literal["sse"],
        extra_headers: Headers | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> Stream[SpeechStreamEvent]: ...

    def create(
        self,
        *,
        model: str,
        input: str,
        voice: str,
        instructions: str | None = None,
        response_format: SpeechResponseFormat | None = None,
        speed: float | None = None,
        stream_format: Literal["audio", "sse"] | None = None,
        extra_headers: Headers | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> BinaryResponseContent | Stream[SpeechStreamEvent]:
        """Speak ``input`` and return the whole audio file.

        Args:
            model: The speech model's id (see ``client.models.list()``).
            input: The text, up to 4,096 characters.
            voice: One of the model's voices, or one of OpenAI's names (``alloy``, ``nova``, ...) for its default.
            instructions: Style instructions; piper voices ignore them.
            response_format: ``mp3`` (the default), ``opus``, ``aac``, ``flac``, ``wav`` or ``pcm`` (raw 16-bit
                little-endian mono at 24 kHz).
            speed: 0.25 to 4.0; 1.0 is the voice's own pace.
            stream_format: ``"sse"`` returns a ``Stream[SpeechStreamEvent]`` of base64 pieces instead of the file.
            extra_headers: Headers to send with this call only.
            extra_body: JSON fields this SDK does not name.
            timeout: This call's timeout, instead of the client's.

        Returns:
            ``BinaryResponseContent`` (``.content``, ``.write_to_file(path)``), or with ``stream_format="sse"`` a
            ``Stream[SpeechStreamEvent]``.

        Raises:
            APIStatusError: The server refused the request (BadRequestError for an unknown voice, an empty or too
                long input, a speed out of range) or failed it.
            APIConnectionError: The server could not be reached, after the client's retries.
        """
        body = _body(model, input, voice, instructions, response_format, speed, stream_format, extra_body)
        opts = request_options(extra_headers, None, timeout)
        if stream_format == "sse":
            return Stream(self._client.post_raw(PATH, body=body, options=opts, stream=True), SpeechStreamEvent)
        return BinaryResponseContent(self._client.post_raw(PATH, body=body, options=opts, stream=False))


class SpeechWithStreamingResponse:
    """``client.audio.speech.with_streaming_response``: the audio as it is made."""

    def __init__(self, client: SyncAPIClient) -> None:
        self._client = client

    def create(
        self,
        *,
        model: str,
        input: str,
        voice: str,
        instructions: str | None = None,
        response_format: SpeechResponseFormat | None = None,
        speed: float | None = None,
        extra_headers: Headers | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> StreamedResponseManager:
        """As ``create``, but a context manager: ``with ... as response: for chunk in response.iter_bytes()``."""
        body = _body(model, input, voice, instructions, response_format, speed, None, extra_body)
        opts = request_options(extra_headers, None, timeout)
        return StreamedResponseManager(lambda: self._client.post_raw(PATH, body=body, options=opts, stream=True))


class AsyncSpeech(AsyncAPIResource):
    """``client.audio.speech`` on ``AsyncEmber``."""

    def __init__(self, client: AsyncAPIClient) -> None:
        super().__init__(client)
        self.with_streaming_response = AsyncSpeechWithStreamingResponse(client)

    @overload
    async def create(
        self,
        *,
        model: str,
        input: str,
        voice: str,
        instructions: str | None = None,
        response_format: SpeechResponseFormat | None = None,
        speed: float | None = None,
        stream_format: Literal["audio"] | None = None,
        extra_headers: Headers | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> AsyncBinaryResponseContent: ...

    @overload
    async def create(
        self,
        *,
        model: str,
        input: str,
        voice: str,
        instructions: str | None = None,
        response_format: SpeechResponseFormat | None = None,
        speed: float | None = None,
        stream_format: Literal["sse"],
        extra_headers: Headers | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> AsyncStream[SpeechStreamEvent]: ...

    async def create(
        self,
        *,
        model: str,
        input: str,
        voice: str,
        instructions: str | None = None,
        response_format: SpeechResponseFormat | None = None,
        speed: float | None = None,
        stream_format: Literal["audio", "sse"] | None = None,
        extra_headers: Headers | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> AsyncBinaryResponseContent | AsyncStream[SpeechStreamEvent]:
        """As ``Ember().audio.speech.create``, awaited."""
        body = _body(model, input, voice, instructions, response_format, speed, stream_format, extra_body)
        opts = request_options(extra_headers, None, timeout)
        if stream_format == "sse":
            response = await self._client.post_raw(PATH, body=body, options=opts, stream=True)
            return AsyncStream(response, SpeechStreamEvent)
        return AsyncBinaryResponseContent(await self._client.post_raw(PATH, body=body, options=opts, stream=False))


class AsyncSpeechWithStreamingResponse:
    """``client.audio.speech.with_streaming_response`` on ``AsyncEmber``."""

    def __init__(self, client: AsyncAPIClient) -> None:
        self._client = client

    def create(
        self,
        *,
        model: str,
        input: str,
        voice: str,
        instructions: str | None = None,
        response_format: SpeechResponseFormat | None = None,
        speed: float | None = None,
        extra_headers: Headers | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> AsyncStreamedResponseManager:
        """As ``create``: ``async with ... as response: async for chunk in response.iter_bytes()``."""
        body = _body(model, input, voice, instructions, response_format, speed, None, extra_body)
        opts = request_options(extra_headers, None, timeout)
        return AsyncStreamedResponseManager(lambda: self._client.post_raw(PATH, body=body, options=opts, stream=True))
