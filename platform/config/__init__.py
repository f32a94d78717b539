"""Settings and the model registry, validated at the edge with pydantic."""

from ember.config.settings import (
    DEFAULT_AUDIO_MODEL,
    DEFAULT_EMBED_MODEL,
    DEFAULT_IMAGE_MODEL,
    DEFAULT_MODEL,
    DEFAULT_SPEECH_MODEL,
    QWEN_05B_MODEL,
    SMOLLM2_MODEL,
    WHISPER_BASE_MODEL,
    ConfigError,
    GatewaySettings,
    ModelSpec,
    NatsSettings,
    Settings,
    load_settings,
)

__all__ = [
    "DEFAULT_AUDIO_MODEL",
    "DEFAULT_EMBED_MODEL",
    "DEFAULT_IMAGE_MODEL",
    "DEFAULT_MODEL",
    "DEFAULT_SPEECH_MODEL",
    "QWEN_05B_MODEL",
    "SMOLLM2_MODEL",
    "WHISPER_BASE_MODEL",
    "ConfigError",
    "GatewaySettings",
    "ModelSpec",
    "NatsSettings",
    "Settings",
    "load_settings",
]
