"""``client.images``: text-to-image (``generate``), ``edit`` and ``create_variation`` (multipart uploads).

``generate`` and ``edit`` stream with ``stream=True``: a ``Stream[ImageStreamEvent]`` of previews
(``partial_images``) and finished images, as OpenAI's GPT image models stream them.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeAlias, Unpack, cast, overload

from .._files import FileTypes
from .._resource import AsyncAPIResource, SyncAPIResource, make_body, request_options
from .._streaming import AsyncStream, Stream
from .._types import NOT_GIVEN, Body, Headers, NotGiven, Timeout
from ..types.image import (
    ImageEditParams,
    ImageGenerateParams,
    ImagesResponse,
    ImageStreamEvent,
    ImageVariationParams,
)

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = ["AsyncImages", "ImageInput", "Images"]

# What ``image=`` and ``mask=`` take: anything ``file=`` of the audio API takes, or a Pillow image (sent as PNG).
ImageInput: TypeAlias = "FileTypes | PILImage"
_MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


def _image_part(image: ImageInput, default_name: str) -> tuple[str, bytes, str]:
    """(filename, content, content type) of an upload; the content is read once so that a retry can resend it."""
    # Without PIL imported, ``image`` cannot be a Pillow image: the base install needs no Pillow.
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(image, pil.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return f"{default_name}.png", buf.getvalue(), "image/png"
    if isinstance(image, tuple):
        name, content = image[0], image[1]
        data = content if isinstance(content, bytes) else content.read()
        kind = image[2] if len(image) == 3 else _MEDIA.get(Path(name).suffix.lower(), "application/octet-stream")
        return name, data, kind
    if isinstance(image, bytes):
        return default_name, image, "application/octet-stream"
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        return path.name, path.read_bytes(), _MEDIA.get(path.suffix.lower(), "application/octet-stream")
    reader = cast(IO[bytes], image)  # what is left: an open binary file
    name = os.path.basename(str(getattr(reader, "name", default_name)))
    return name, reader.read(), _MEDIA.get(Path(name).suffix.lower(), "application/octet-stream")


def _fields(body: Mapping[str, Any], extra_body: Body | None) -> dict[str, str]:
    """Form fields: every value as text (booleans as ``true``/``false``)."""
    merged = {**body, **(extra_body or {})}
    return {k: ("true" if v else "false") if isinstance(v, bool) else str(v) for k, v in merged.items()}


def _edit_request(
    image: ImageInput, prompt: str, mask: ImageInput | None, stream: bool, params: ImageEditParams
) -> tuple[dict[str, Any], dict[str, tuple[str, bytes, str]]]:
    body = make_body("images.edit", params, ImageEditParams, prompt=prompt)
    if stream:
        body["stream"] = True
    files = {"image": _image_part(image, "image")}
    if mask is not None:
        files["mask"] = _image_part(mask, "mask")
    return body, files


class Images(SyncAPIResource):
    @overload
    def generate(
        self,
        *,
        stream: Literal[False] = False,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        **params: Unpack[ImageGenerateParams],
    ) -> ImagesResponse: ...

    @overload
    def generate(
        self,
        *,
        stream: Literal[True],
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        **params: Unpack[ImageGenerateParams],
    ) -> Stream[ImageStreamEvent]: ...

    @overload
    def generate(
        self,
        *,
        stream: bool,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        **params: Unpack[ImageGenerateParams],
    ) -> ImagesResponse | Stream[ImageStreamEvent]: ...

    def generate(
        self,
        *,
        stream: bool = False,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        **params: Unpack[ImageGenerateParams],
    ) -> ImagesResponse | Stream[ImageStreamEvent]:
        """Generate images from a prompt.

        Args:
            stream: Return a ``Stream`` of ``ImageStreamEvent``: ``partial_images`` previews per image, then
                each image as it is done (always base64).
            extra_headers: Headers to send with this call only.
            extra_body: Fields to add to the body (parameters this SDK does not name).
            timeout: This call's timeout, instead of the client's.
            **params: ``prompt`` (required), ``model``, ``n``, ``size`` ("256x256"), ``response_format``
                ("url" or "b64_json"), ``output_format`` ("png" or "jpeg"), ``partial_images`` (0..3, with
                ``stream=True``), and Ember's ``seed``, ``negative_prompt``, ``num_inference_steps``,
                ``guidance_scale``.

        Returns:
            An ``ImagesResponse`` (``response.to_pil()`` decodes every image with Pillow), or with
            ``stream=True`` a ``Stream[ImageStreamEvent]``.
        """
        body = make_body("images.generate", params, ImageGenerateParams)
        options = request_options(extra_headers, extra_body, timeout)
        if stream:
            body["stream"] = True
            return self._client.post_stream("images/generations", body=body, cast_to=ImageStreamEvent, options=options)
        return self._client.post("images/generations", body=body, cast_to=ImagesResponse, options=options)

    @overload
    def edit(
        self,
        *,
        image: ImageInput,
        prompt: str,
        mask: ImageInput | None = None,
        stream: Literal[False] = False,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        **params: Unpack[ImageEditParams],
    ) -> ImagesResponse: ...

    @overload
    def edit(
        self,
        *,
        image: ImageInput,
        prompt: str,
        mask: ImageInput | None = None,
        stream: Literal[True],
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        **params: Unpack[ImageEditParams],
    ) -> Stream[ImageStreamEvent]: ...

    def edit(
        self,
        *,
        image: ImageInput,
        prompt: str,
        mask: ImageInput | None = None,
        stream: bool = False,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        **params: Unpack[ImageEditParams],
    ) -> ImagesResponse | Stream[ImageStreamEvent]:
        """Repaint an image following a prompt; with ``mask``, only where the mask is transparent.

        Args:
            image: The source image: a path, bytes, a binary file, (filename, bytes or file[, content type]),
                or a Pillow image (sent as PNG).
            prompt: What the edited image should show.
            mask: Optional, the same kinds as ``image``: its transparent pixels mark where to edit.
            stream: Return a ``Stream`` of ``ImageStreamEvent``: ``image_edit.partial_image`` previews, then
                ``image_edit.completed`` per image.
            extra_headers: Headers to send with this call only.
            extra_body: Form fields this SDK does not name.
            timeout: This call's timeout, instead of the client's.
            **params: ``model``, ``n``, ``size``, ``response_format``, ``output_format``, ``partial_images``,
                and Ember's ``strength`` (0..1], ``seed``, ``negative_prompt``, ``num_inference_steps``,
                ``guidance_scale``.

        Returns:
            An ``ImagesResponse``, or with ``stream=True`` a ``Stream[ImageStreamEvent]``.

        Raises:
            BadRequestError: The server refused the request (an upload that is not an image, a bad field).
            APIConnectionError: The server could not be reached, after the client's retries.
        """
        body, files = _edit_request(image, prompt, mask, stream, params)
        options = request_options(extra_headers, None, timeout)
        response = self._client.post_multipart(
            "images/edits", fields=_fields(body, extra_body), files=files, options=options, stream=stream
        )
        if stream:
            return Stream(response, ImageStreamEvent)
        return self._client._parse(response, ImagesResponse)

    def create_variation(
        self,
        *,
        image: ImageInput,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        **params: Unpack[ImageVariationParams],
    ) -> ImagesResponse:
        """Variations of an image.

        Args:
            image: The source image, as for ``edit``.
            extra_headers: Headers to send with this call only.
            extra_body: Form fields this SDK does not name.
            timeout: This call's timeout, instead of the client's.
            **params: ``model``, ``n``, ``size``, ``response_format``, ``output_format``, and Ember's
                ``strength`` (how far from the source, (0..1]), ``seed``, ``num_inference_steps``, ...

        Returns:
            An ``ImagesResponse``.
        """
        body = make_body("images.create_variation", params, ImageVariationParams)
        options = request_options(extra_headers, None, timeout)
        response = self._client.post_multipart(
            "images/variations",
            fields=_fields(body, extra_body),
            files={"image": _image_part(image, "image")},
            options=options,
            stream=False,
        )
        return self._client._parse(response, ImagesResponse)


class AsyncImages(AsyncAPIResource):
    @overload
    async def generate(
        self,
        *,
        stream: Literal[False] = False,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        **params: Unpack[ImageGenerateParams],
    ) -> ImagesResponse: ...

    @overload
    async def generate(
        self,
        *,
        stream: Literal[True],
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        **params: Unpack[ImageGenerateParams],
    ) -> AsyncStream[ImageStreamEvent]: ...

    @overload
    async def generate(
        self,
        *,
        stream: bool,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        **params: Unpack[ImageGenerateParams],
    ) -> ImagesResponse | AsyncStream[ImageStreamEvent]: ...

    async def generate(
        self,
        *,
        stream: bool = False,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        **params: Unpack[ImageGenerateParams],
    ) -> ImagesResponse | AsyncStream[ImageStreamEvent]:
        """Generate images from a prompt; see ``Images.generate``."""
        body = make_body("images.generate", params, ImageGenerateParams)
        options = request_options(extra_headers, extra_body, timeout)
        if stream:
            body["stream"] = True
            return await self._client.post_stream(
                "images/generations", body=body, cast_to=ImageStreamEvent, options=options
            )
        return await self._client.post("images/generations", body=body, cast_to=ImagesResponse, options=options)

    @overload
    async def edit(
        self,
        *,
        image: ImageInput,
        prompt: str,
        mask: ImageInput | None = None,
        stream: Literal[False] = False,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        **params: Unpack[ImageEditParams],
    ) -> ImagesResponse: ...

    @overload
    async def edit(
        self,
        *,
        image: ImageInput,
        prompt: str,
        mask: ImageInput | None = None,
        stream: Literal[True],
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        **params: Unpack[ImageEditParams],
    ) -> AsyncStream[ImageStreamEvent]: ...

    async def edit(
        self,
        *,
        image: ImageInput,
        prompt: str,
        mask: ImageInput | None = None,
        stream: bool = False,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        **params: Unpack[ImageEditParams],
    ) -> ImagesResponse | AsyncStream[ImageStreamEvent]:
        """Repaint an image following a prompt; see ``Images.edit``."""
        body, files = _edit_request(image, prompt, mask, stream, params)
        options = request_options(extra_headers, None, timeout)
        response = await self._client.post_multipart(
            "images/edits", fields=_fields(body, extra_body), files=files, options=options, stream=stream
        )
        if stream:
            return AsyncStream(response, ImageStreamEvent)
        return self._client._parse(response, ImagesResponse)

    async def create_variation(
        self,
        *,
        image: ImageInput,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        **params: Unpack[ImageVariationParams],
    ) -> ImagesResponse:
        """Variations of an image; see ``Images.create_variation``."""
        body = make_body("images.create_variation", params, ImageVariationParams)
        options = request_options(extra_headers, None, timeout)
        response = await self._client.post_multipart(
            "images/variations",
            fields=_fields(body, extra_body),
            files={"image": _image_part(image, "image")},
            options=options,
            stream=False,
        )
        return self._client._parse(response, ImagesResponse)
