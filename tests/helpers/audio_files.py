"""Uploads for the audio tests: WAV files made on the spot, and files that are not audio but that FFmpeg's
probing would open as something else (an RTP session, playlists)."""

from __future__ import annotations

import io
import wave

import numpy as np

# An RTP session description: FFmpeg's SDP demuxer listens on the UDP ports it names (20 s, then gives up).
SDP = b"""v=0
o=- 0 0 IN IP4 127.0.0.1
s=ember
c=IN IP4 127.0.0.1
t=0 0
m=audio 45678 RTP/AVP 0
a=rtpmap:0 PCMU/8000
"""
# What FFmpeg's probing would take for a demuxer that reads other resources: UDP ports of the uploader's choosing,
# URLs and local paths.
NOT_AUDIO = {
    "sdp": SDP,
    "hls": b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/a.ts\n#EXT-X-ENDLIST\n",
    "ffconcat": b"ffconcat version 1.0\nfile /etc/passwd\nfile http://127.0.0.1:9/a.wav\n",
    "concat-url": b"concat:/etc/passwd|/etc/hosts",
    "id3-then-sdp": b"ID3\x04\x00\x00\x00\x00\x00\x00" + SDP,
}


def _wav(frames: bytes, rate: int, width: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


def tone_wav(seconds: float, rate: int = 16000) -> bytes:
    """A 300 Hz tone, 16-bit mono."""
    t = np.arange(int(seconds * rate)) / rate
    return _wav((0.3 * np.sin(2 * np.pi * 300 * t) * 32767).astype("<i2").tobytes(), rate, 2)


def silent_wav(seconds: float, rate: int = 8000) -> bytes:
    """8-bit silence: the most audio per uploaded byte a WAV holds (a minute is 480 kB, 25 MB is ~52 minutes)."""
    return _wav(b"\x80" * int(seconds * rate), rate, 1)
