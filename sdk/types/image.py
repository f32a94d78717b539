"""``client.images`` results and parameters in OpenAI's shape, with Pillow decoding on request."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Literal, TypedDict

import httpx

from .._models import BaseModel

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "Image",
    "ImageEditParams",
    "ImageGenerateParams",
    "ImageStreamEvent",
    "ImageStreamUsage",
    "ImageVariationParams",
    "ImagesResponse",
]


def _pil(data: bytes) -> PILImage:
    try:
        from PIL import Image as PIL
    except ImportError as e:  # the SDK's base install has no Pillow
        raise ImportError("decoding images needs Pillow: pip install pillow") from e
    img = PIL.open(io.BytesIO(data))
    img.load()
    return img


class Image(BaseModel):
    """One generated image: inline (``b64_json``) or at a short-lived ``url``, as the request asked."""

    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None
    # Ember: the seed that reproduces this image alone.
    seed: int | None = None

    def content(self, timeout: float = 60.0) -> bytes:
        """The encoded image (PNG or JPEG): decoded from b64_json, or downloaded from the url."""
        if self.b64_json is not None:
            return base64.b64decode(self.b64_json)
        if self.url is not None:
            response = httpx.get(self.url, timeout=timeout)
            response.raise_for_status()
            return response.content
        raise ValueError("this image has neither b64_json nor url")

    def to_pil(self) -> PILImage:
        """The image as a Pillow image (needs Pillow)."""
        return _pil(self.content())


class ImagesResponse(BaseModel):
    created: int
    data: list[Image]

    def to_pil(self) -> list[PILImage]:
        """Every image as a Pillow image, in order (needs Pillow)."""
        return [image.to_pil() for image in self.data]


class ImageStreamUsage(BaseModel):
    """What a completed image was charged: Ember meters images, not tokens."""

    images: int


class ImageStreamEvent(BaseModel):
    """One event of ``stream=True`` (OpenAI's ``ImageGenStreamEvent``/``ImageEditStreamEvent``).

    ``image_generation.partial_image`` (or ``image_edit.partial_image``): a preview of image ``index``, number
    ``partial_image_index``; ``image_generation.completed`` (``image_edit.completed``): image ``index`` done.
    """

    type: Literal[
        "image_generation.partial_image",
        "image_generation.completed",
        "image_edit.partial_image",
        "image_edit.completed",
    ]
    b64_json: str
    created_at: int
    # "WxH"
    size: str
    output_format: Literal["png", "jpeg"]
    # Partial images only: 0, 1, ... per image.
    partial_image_index: int | None = None
    # Ember: which of the request's n images this event is about.
    index: int = 0
    # Completed events only (Ember): the seed that reproduces this image alone, and what it was charged.
    seed: int | None = None
    usage: ImageStreamUsage | None = None

    def content(self) -> bytes:
        """The encoded image (PNG or JPEG)."""
        return base64.b64decode(self.b64_json)

    def to_pil(self) -> PILImage:
        """The image as a Pillow image (needs Pillow)."""
        return _pil(self.content())


class _ImageOptions(TypedDict, total=False):
    model: str
    n: int
    size: str
    response_format: Literal["url", "b64_json"]
    output_format: Literal["png", "jpeg"]
    user: str
    # Ember's extensions.
    seed: int
    negative_prompt: str
    num_inference_steps: int
    guidance_scale: float


class ImageGenerateParams(_ImageOptions, total=False):
    """The body of ``POST /images/generations``; ``prompt`` is required."""

    prompt: str
    quality: str
    style: str
    # Previews per image (0..3) with ``stream=True``.
    partial_images: int


class ImageEditParams(_ImageOptions, total=False):
    """The form fields of ``POST /images/edits`` besides ``image``, ``mask`` and ``prompt``."""

    partial_images: int
    # Ember: how far from the source image to move (0..1]; default 0.75.
    strength: float


class ImageVariationParams(_ImageOptions, total=False):
    """The form fields of ``POST /images/variations`` besides ``image``."""

    strength: float
