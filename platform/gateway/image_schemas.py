"""Request bodies of the images API (``/v1/images/generations``, ``/edits``, ``/variations``), in OpenAI's shape.

Like the text schemas, unknown fields are ignored and known ones we cannot honour are refused with a 400.
Ember's extensions: ``seed``, ``negative_prompt``, ``num_inference_steps``, ``guidance_scale`` (and ``strength``
for edits and variations). Generations and edits stream (``stream``, ``partial_images``) as OpenAI's GPT image
models do: server-sent events with base64 images only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# OpenAI allows 1..10 images per request.
MAX_IMAGES = 10
MAX_PROMPT_CHARS = 4000
MAX_STEPS = 500
MAX_SIDE = 2048
# OpenAI's range for partial_images.
MAX_PARTIAL_IMAGES = 3


def parse_size(size: str) -> tuple[int, int]:
    """ "WxH" as (width, height); raises ValueError with a message naming the value."""
    w, sep, h = size.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise ValueError(f"size must look like '256x256', got {size!r}")
    width, height = int(w), int(h)
    if not (8 <= width <= MAX_SIDE and 8 <= height <= MAX_SIDE):
        raise ValueError(f"size {size!r} is out of range: each side must be 8..{MAX_SIDE} pixels")
    return width, height


class _ImageBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # None: the server's first configured image model.
    model: str | None = None
    n: int = Field(default=1, ge=1, le=MAX_IMAGES)
    # "WxH"; None: the model's default size. Sizes the model does not serve are refused by its worker.
    size: str | None = None
    response_format: Literal["url", "b64_json"] = "url"
    output_format: Literal["png", "jpeg"] = "png"
    # Same seed, same other parameters -> the same images; image i uses seed + i.
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    num_inference_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=100.0, allow_inf_nan=False)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    user: str | None = None

    @field_validator("size")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None and v != "auto":
            parse_size(v)
        return v

    def dimensions(self) -> tuple[int | None, int | None]:
        """(width, height), or (None, None) for the model's default."""
        if self.size is None or self.size == "auto":
            return None, None
        return parse_size(self.size)

    def unsupported(self) -> tuple[str, str] | None:
        return None


class _Streamable(_ImageBody):
    """Generations and edits: ``stream=true`` sends server-sent events, a preview or two before each image."""

    stream: bool = False
    # Previews per image while streaming (0: only the finished images); ignored without stream, as OpenAI does.
    partial_images: int = Field(default=0, ge=0, le=MAX_PARTIAL_IMAGES)

    def unsupported(self) -> tuple[str, str] | None:
        # OpenAI streams base64 only; a default response_format follows along, an explicit url cannot.
        if self.stream and self.response_format == "url" and "response_format" in self.model_fields_set:
            return "response_format", "response_format='url' cannot be streamed; use 'b64_json' or leave it unset"
        return None


class ImageGenerationRequest(_Streamable):
    """``POST /v1/images/generations``."""

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    # OpenAI's DALL-E knobs: accepted and ignored, since they have no meaning for these models.
    quality: str | None = None
    style: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt must not be empty")
        return v


class ImageEditForm(_Streamable):
    """The non-file fields of ``POST /v1/images/edits`` (multipart)."""

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    # How far from the source image to move (0..1]; None: 0.75.
    strength: float | None = Field(default=None, gt=0.0, le=1.0)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt must not be empty")
        return v


class ImageVariationForm(_ImageBody):
    """The non-file fields of ``POST /v1/images/variations`` (multipart)."""

    strength: float | None = Field(default=None, gt=0.0, le=1.0)
