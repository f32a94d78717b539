"""``client.images.generate`` results in OpenAI's shape, with Pillow decoding on request."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Literal, TypedDict

import httpx

from .._models import BaseModel

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = ["Image", "ImageGenerateParams", "ImagesResponse"]


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


class ImageGenerateParams(TypedDict, total=False):
    """The body of ``POST /images/generations``; ``prompt`` is required."""

    prompt: str
    model: str
    n: int
    size: str
    response_format: Literal["url", "b64_json"]
    output_format: Literal["png", "jpeg"]
    quality: str
    style: str
    user: str
    # Ember's extensions.
    seed: int
    negative_prompt: str
    num_inference_steps: int
    guidance_scale: float
