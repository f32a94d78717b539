"""The audio worker accepts a job once its header checks out and decodes it afterwards, on its own threads: a
long decode never delays the acceptance of other jobs, and a job cancelled while decoding never reaches the engine.

An in-process AudioJobHandler (tiny random Whisper) on a real nats-server, driven through a real JobClient.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ember.bus.blobs import BlobStore
from ember.bus.client import JobClient, JobRefused
from ember.bus.connection import connect
from ember.bus.messages import AudioJob, AudioResult, JobStatus, StreamReply
from ember.bus.worker import WorkerHost
from ember.config import load_settings
from ember.runtimes.audio.worker import AudioJobHandler, start_model_thread
from tests.helpers.audio_files import SDP, silent_wav, tone_wav
from tests.helpers.cluster import write_config

MODEL = "tiny-whisper-decoding"


@dataclass
class Stack:
    handler: AudioJobHandler
    client: JobClient
    blobs: BlobStore


@pytest.fixture
async def stack(nats_url: str, tiny_whisper_path: Path, tmp_path: Path) -> AsyncIterator[Stack]:
    config = write_config(
        tmp_path / "ember.toml",
        {MODEL: {"modality": "audio", "path": str(tiny_whisper_path), "max_batch": 4}},
        audio={"decode_threads": 1},  # one decode at a time: a second upload waits for the first one's turn
    )
    settings = load_settings(config)
    loaded, engine = await start_model_thread(MODEL, settings)
    nc = await connect(nats_url, name="audio-decoding-test")
    blobs = await BlobStore.open(nc.jetstream())
    handler = AudioJobHandler(MODEL, loaded, engine, blobs, settings.audio)
    host = WorkerHost(nc, handler)
    await host.start()
    client = JobClient(nc)
    await client.start()
    try:
        yield Stack(handler, client, blobs)
    finally:
        await client.stop()
        await host.stop(grace_s=0)
        handler.close()
        engine.stop()
        await nc.close()


async def test_a_long_decode_does_not_delay_another_jobs_acceptance(stack: Stack) -> None:
    long_upload = await stack.blobs.put(silent_wav(25 * 60))  # 12 MB: about a second to decode here
    long_job = AudioJob(request_id="long", model=MODEL, audio_object=long_upload, filename="long.wav")
    started = time.monotonic()
    long_stream = await stack.client.submit(long_job, StreamReply)
    await long_stream.wait_accepted(10)
    long_accepted_s = time.monotonic() - started

    short_job = AudioJob(
        request_id="short", model=MODEL, audio_b64=base64.b64encode(tone_wav(1.0)).decode(), filename="short.wav"
    )
    short_started = time.monotonic()
    short_stream = await stack.client.submit(short_job, StreamReply)
    await short_stream.wait_accepted(10)
    short_accepted_s = time.monotonic() - short_started
    # Both were accepted from their headers while the long file was still decoding on the only decode thread.
    assert "long" in stack.handler._decoding, "the long upload should still be decoding"
    print(f"\nlong job accepted in {long_accepted_s:.3f}s, then the short one in {short_accepted_s:.3f}s")
    assert short_accepted_s < 0.5

    await long_stream.cancel()  # cancelled while decoding: it must never reach the engine
    replies = [r async for r in short_stream]
    assert isinstance(replies[-1], AudioResult) and replies[-1].status == JobStatus.FINISHED_STOPPED
    deadline = time.monotonic() + 10
    while stack.handler._decoding or stack.handler.engine.load() != (0, 0):
        assert time.monotonic() < deadline, (stack.handler._decoding, stack.handler.engine.load())
        await asyncio.sleep(0.05)


async def test_bad_headers_are_refused_before_acceptance(stack: Stack) -> None:
    for request_id, data in (("sdp", SDP), ("too-long", silent_wav(31 * 60))):
        upload = await stack.blobs.put(data)
        job = AudioJob(request_id=request_id, model=MODEL, audio_object=upload, filename=f"{request_id}.wav")
        stream = await stack.client.submit(job, StreamReply)
        started = time.monotonic()
        with pytest.raises(JobRefused) as refused:
            await stream.wait_accepted(10)
        assert time.monotonic() - started < 2.0  # most of it is fetching 15 MB from the object store
        error = refused.value.failed.error
        assert (error.status, error.code, error.param) == (400, "invalid_audio", "file"), error
    assert "limit of 1800 s (30 min)" in error.message
