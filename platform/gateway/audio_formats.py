"""A finished transcription in each of OpenAI's ``response_format``s: json, text, srt, vtt, verbose_json."""

from __future__ import annotations

from typing import Any, Literal

from starlette.responses import JSONResponse, PlainTextResponse, Response

from ember.bus.messages import AudioResult, AudioSegment

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
RESPONSE_FORMATS: tuple[str, ...] = ("json", "text", "srt", "vtt", "verbose_json")


def timestamp(seconds: float, decimal: str) -> str:
    """``HH:MM:SS,mmm`` (SRT) or ``HH:MM:SS.mmm`` (WebVTT)."""
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def srt(segments: list[AudioSegment]) -> str:
    cues = [
        f"{i}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(segments, start=1)
    ]
    return "\n".join(cues) + ("\n" if cues else "")


def vtt(segments: list[AudioSegment]) -> str:
    cues = [f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text.strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues) + ("\n" if cues else "")


def usage(result: AudioResult) -> dict[str, Any]:
    """OpenAI's duration-based usage object for audio."""
    return {"type": "duration", "seconds": max(0, round(result.duration + 0.4999))}


def verbose_json(
    task: str, segments: list[AudioSegment], result: AudioResult, words: bool, with_segments: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": task,
        "language": result.language,
        "duration": round(result.duration, 3),
        "text": result.text,
    }
    if with_segments:
        body["segments"] = [
            {
                "id": s.id,
                "seek": s.seek,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": s.tokens,
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            }
            for s in segments
        ]
    if words:
        body["words"] = [w.model_dump() for s in segments for w in (s.words or [])]
    body["usage"] = usage(result)
    return body


def render(
    fmt: str,
    task: str,
    segments: list[AudioSegment],
    result: AudioResult,
    granularities: frozenset[str],
    headers: dict[str, str],
) -> Response:
    """The HTTP response for one finished transcription."""
    if fmt == "text":
        return PlainTextResponse(result.text + "\n", headers=headers)
    if fmt == "srt":
        return PlainTextResponse(srt(segments), headers=headers)
    if fmt == "vtt":
        return PlainTextResponse(vtt(segments), media_type="text/vtt", headers=headers)
    if fmt == "verbose_json":
        # OpenAI returns segments unless only word granularity was asked for.
        with_segments = "segment" in granularities or "word" not in granularities
        body = verbose_json(task, segments, result, "word" in granularities, with_segments)
        return JSONResponse(body, headers=headers)
    return JSONResponse({"text": result.text, "usage": usage(result)}, headers=headers)
