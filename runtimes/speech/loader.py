"""A piper voice from disk: its VITS network (``<name>.onnx``) and the config beside it (``<name>.onnx.json``).

A model's weights are the .onnx file itself or a folder holding exactly one (a voice package's ``data`` folder).
The network runs in an onnxruntime session of its own, on the engine thread only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import onnxruntime
from piper import PiperConfig, PiperVoice

from ember.config import ConfigError
from ember.runtimes.speech.model import PiperModel

log = logging.getLogger("ember.speech.loader")


def voice_files(path: Path) -> tuple[Path, Path]:
    """(network, config) of the voice at ``path``; raises ConfigError naming what is missing."""
    if path.is_dir():
        networks = sorted(path.glob("*.onnx"))
        if len(networks) != 1:
            names = ", ".join(n.name for n in networks) or "none"
            raise ConfigError(f"a speech model folder must hold exactly one .onnx voice; {path} holds {names}")
        path = networks[0]
    config = path.with_name(path.name + ".json")
    if not config.is_file():
        config = path.with_name("config.json")
    if path.suffix != ".onnx" or not path.is_file() or not config.is_file():
        raise ConfigError(f"{path} is not a piper voice: it needs <name>.onnx with <name>.onnx.json beside it")
    return path, config


def providers(device: str) -> list[str]:
    """onnxruntime's execution providers for ``device`` ("auto": CUDA when this onnxruntime has it)."""
    available = onnxruntime.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" not in available:
        raise ConfigError(f"device={device!r}, but this onnxruntime has no CUDA (pip install onnxruntime-gpu)")
    if device != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def load_voice(
    path: Path, *, device: str = "auto", threads: int | None = None, voices: dict[str, int | str] | None = None
) -> PiperModel:
    """Load the voice at ``path``; every configured voice must name a speaker the file has (else ConfigError)."""
    network, config_path = voice_files(path)
    try:
        config = PiperConfig.from_dict(json.loads(config_path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{config_path} is not a piper voice config: {e!r}") from None
    options = onnxruntime.SessionOptions()
    # One engine thread runs one piece at a time: every core goes to that piece (or the configured share).
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    # NOTE: onnxruntime's pool threads spin between ops by default, holding the cores that this worker's event loop,
    # its encoding threads and the other workers on the box need: on a loaded 2-core machine the event loop went
    # seconds without a turn, missed the gateway's probes, and its streams were cut as "worker went away".
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(network), sess_options=options, providers=providers(device))
    model = PiperModel(PiperVoice(session=session, config=config))
    for name, speaker in (voices or {}).items():
        try:
            model.voice_for(speaker, 1.0)
        except KeyError:
            known = ", ".join(model.speaker_ids) or f"0..{max(1, model.num_speakers) - 1}"
            raise ConfigError(f"voice {name!r}: speaker {speaker!r} is not in {network.name} ({known})") from None
    log.info("loaded %s: %d Hz, %d speaker(s)", network.name, model.sample_rate, max(1, model.num_speakers))
    return model
