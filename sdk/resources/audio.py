"""``client.audio.transcriptions`` and ``client.audio.translations``: Whisper over a multipart upload.

The upload is ``multipart/form-data`` (a file part plus form fields), not JSON like every other call, so the
request is built here from the client's headers, retries and parsing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeAlias, overload

import httpx

from .._base_client import AsyncAPIClient, BaseClient, SyncAPIClient
from .._files import FileTypes, file_part
from .._resource import AsyncAPIResource, SyncAPIResource, request_options
from .._streaming import AsyncStream, Stream
from .._types import NOT_GIVEN, Headers, NotGiven, Timeout
from ..types.audio import AudioResponseFormat, Transcription, TranscriptionStreamEvent, TranscriptionVerbose
from .speech import AsyncSpeech, Speech

__all__ = ["AsyncAudio", "AsyncTranscriptions", "AsyncTranslations", "Audio", "Transcriptions", "Translations"]

Result: TypeAlias = Transcription | TranscriptionVerbose | str


def _form(
    model: str,
    language: str | None,
    prompt: str | None,
    response_format: str,
    temperature: float | None,
    granularities: Sequence[str] | None,
    stream: bool,
    extra_body: Mapping[str, Any] | None,
) -> dict[str, str | list[str]]:
    fields: dict[str, str | list[str]] = {"model": model, "response_format": response_format}
    if language is not None:
        fields["language"] = language
    if prompt is not None:
        fields["prompt"] = prompt
    if temperature is not None:
        fields["temperature"] = str(temperature)
    if granularities:
        fields["timestamp_granularities[]"] = list(granularities)  # a list: one form field per value
    if stream:
        fields["stream"] = "true"
    fields.update({k: str(v) for k, v in (extra_body or {}).items()})
    return fields


def _result(client: BaseClient[Any], response: httpx.Response, response_format: str) -> Result:
    if response_format in ("text", "srt", "vtt"):
        return response.text
    if response_format == "verbose_json":
        return client._parse(response, TranscriptionVerbose)
    return client._parse(response, Transcription)


class _SyncAudioEndpoint(SyncAPIResource):
    _path = ""

    @overload
    def create(
        self,
        *,
        file: FileTypes,
        model: str,
        stream: Literal[False] = False,
        language: str | None = None,
        prompt: str | None = None,
        response_format: AudioResponseFormat = "json",
        temperature: float | None = None,
        timestamp_granularities: Sequence[Literal["word", "segment"]] | None = None,
        extra_headers: Headers | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> Result: ...

    @overload
    def create(
        self,
        *,
        file: FileTypes,
        model: str,
        stream: Literal[True],
        language: str | None = None,
        prompt: str | None = None,
        response_format: AudioResponseFormat = "json",
        temperature: float | None = None,
        timestamp_granularities: Sequence[Literal["word", "segment"]] | None = None,
        extra_headers: Headers | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> Stream[TranscriptionStreamEvent]: ...

    def create(
        self,
        *,
        file: FileTypes,
        model: str,
        stream: bool = False,
        language: str | None = None,
        prompt: str | None = None,
        response_format: AudioResponseFormat = "json",
        temperature: float | None = None,
        timestamp_granularities: Sequence[Literal["word", "segment"]] | None = None,
        extra_headers: Headers | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
    ) -> Result | Stream[TranscriptionStreamEvent]:
        """Transcribe (or, on ``client.audio.translations``, translate to English) one audio file.

        Args:
            file: The audio (any format FFmpeg reads, up to 25 MB): a path, bytes, a binary file, or a tuple
                (filename, bytes or file[, content type]).
            model: The Whisper model's id (see ``client.models.list()``).
            stream: Return a ``Stream`` of ``TranscriptionStreamEvent``: one delta per segment, then done.
            language: The spoken language (ISO-639-1, e.g. "en"); detected when left out. Transcriptions only.
            prompt: Text that sets the style or spelling of the first window (names, jargon).
            response_format: "json" and "verbose_json" give a model; "text", "srt" and "vtt" give a str.
            temperature: 0 to 1; 0 decodes greedily (hotter only where Whisper falls back on its own).
            timestamp_granularities: ["word"] and/or ["segment"], with response_format="verbose_json".
            extra_headers: Headers to send with this call only.
            extra_body: Form fields this SDK does not name.
            timeout: This call's timeout, instead of the client's.

        Returns:
            ``Transcription`` (json), ``TranscriptionVerbose`` (verbose_json), ``str`` (text, srt, vtt), or a
            ``Stream[TranscriptionStreamEvent]`` with ``stream=True``.

        Raises:
            APIStatusError: The server refused the request (BadRequestError for a file that is not audio,
                APIStatusError with status 413 for a file over 25 MB) or failed it.
            APIConnectionError: The server could not be reached, after the client's retries.
        """
        fields = _form(
            model, language, prompt, response_format, temperature, timestamp_granularities, stream, extra_body
        )
        opts = request_options(extra_headers, None, timeout)
        files = {"file": file_part(file, "audio")}
        response = self._client.post_multipart(self._path, fields=fields, files=files, options=opts, stream=stream)
        if stream:
            return Stream(response, TranscriptionStreamEvent)
        return _result(self._client, response, response_format)


class _AsyncAudioEndpoint(AsyncAPIResource):
    _path = ""

    @overload
    async def create(
        self,
        *,
        file: FileTypes,
        model: str,
        stream: Literal[False] = False,
        language: str | None = None,
        prompt: str | None = None,
        response_format: AudioResponseFormat = "json",
        temperature: float | None = None,
        timestamp_granularities: Sequence[Literal["word", "segment"]] | None = None,
        extra_headers: Headers | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> Result: ...

    @overload
    async def create(
        self,
        *,
        file: FileTypes,
        model: str,
        stream: Literal[True],
        language: str | None = None,
        prompt: str | None = None,
        response_format: AudioResponseFormat = "json",
        temperature: float | None = None,
        timestamp_granularities: Sequence[Literal["word", "segment"]] | None = None,
        extra_headers: Headers | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> AsyncStream[TranscriptionStreamEvent]: ...

    async def create(
        self,
        *,
        file: FileTypes,
        model: str,
        stream: bool = False,
        language: str | None = None,
        prompt: str | None = None,
        response_format: AudioResponseFormat = "json",
        temperature: float | None = None,
        timestamp_granularities: Sequence[Literal["word", "segment"]] | None = None,
        extra_headers: Headers | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
    ) -> Result | AsyncStream[TranscriptionStreamEvent]:
        """As ``Ember().audio.transcriptions.create``, awaited."""
        fields = _form(
            model, language, prompt, response_format, temperature, timestamp_granularities, stream, extra_body
        )
        opts = request_options(extra_headers, None, timeout)
        files = {"file": file_part(file, "audio")}
        response = await self._client.post_multipart(
            self._path, fields=fields, files=files, options=opts, stream=stream
        )
        if stream:
            return AsyncStream(response, TranscriptionStreamEvent)
        return _result(self._client, response, response_format)


class Transcriptions(_SyncAudioEndpoint):
    _path = "audio/transcriptions"


class Translations(_SyncAudioEndpoint):
    """Speech in any language Whisper knows, as English text (``language`` does not apply)."""

    _path = "audio/translations"


class AsyncTranscriptions(_AsyncAudioEndpoint):
    _path = "audio/transcriptions"


class AsyncTranslations(_AsyncAudioEndpoint):
    _path = "audio/translations"


class Audio(SyncAPIResource):
    """``client.audio``: ``transcriptions``, ``translations`` and ``speech``."""

    def __init__(self, client: SyncAPIClient) -> None:
        super().__init__(client)
        self.transcriptions = Transcriptions(client)
        self.translations = Translations(client)
        self.speech = Speech(client)


class AsyncAudio(AsyncAPIResource):
    def __init__(self, client: AsyncAPIClient) -> None:
        super().__init__(client)
        self.transcriptions = AsyncTranscriptions(client)
        self.translations = AsyncTranslations(client)
        self.speech = AsyncSpeech(client)
