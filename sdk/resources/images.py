"""``client.images``: text-to-image (``POST /images/generations``)."""

from __future__ import annotations

from typing import Unpack

from .._resource import AsyncAPIResource, SyncAPIResource, make_body, request_options
from .._types import NOT_GIVEN, Body, Headers, NotGiven, Timeout
from ..types.image import ImageGenerateParams, ImagesResponse

__all__ = ["AsyncImages", "Images"]


class Images(SyncAPIResource):
    def generate(
        self,
        *,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        **params: Unpack[ImageGenerateParams],
    ) -> ImagesResponse:
        """Generate images from a prompt.

        Args:
            extra_headers: Headers to send with this call only.
            extra_body: Fields to add to the body (parameters this SDK does not name).
            timeout: This call's timeout, instead of the client's.
            **params: ``prompt`` (required), ``model``, ``n``, ``size`` ("256x256"), ``response_format``
                ("url" or "b64_json"), ``output_format`` ("png" or "jpeg"), and Ember's ``seed``,
                ``negative_prompt``, ``num_inference_steps``, ``guidance_scale``.

        Returns:
            An ``ImagesResponse``; ``response.to_pil()`` decodes every image with Pillow.
        """
        body = make_body("generate", params, ImageGenerateParams)
        options = request_options(extra_headers, extra_body, timeout)
        return self._client.post("images/generations", body=body, cast_to=ImagesResponse, options=options)


class AsyncImages(AsyncAPIResource):
    async def generate(
        self,
        *,
        extra_headers: Headers | None = None,
        extra_body: Body | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,  # noqa: ASYNC109
        **params: Unpack[ImageGenerateParams],
    ) -> ImagesResponse:
        """Generate images from a prompt; see ``Images.generate``."""
        body = make_body("generate", params, ImageGenerateParams)
        options = request_options(extra_headers, extra_body, timeout)
        return await self._client.post("images/generations", body=body, cast_to=ImagesResponse, options=options)
