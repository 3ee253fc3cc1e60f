"""Routes that work in latent space: decode, sample (service.http.routes.sample), interpolate.

No `from __future__ import annotations` here: the query models close over `settings`.
"""

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import Field
from starlette.responses import Response

from service.http.deps import ModelCall, model_call
from service.http.problems import invalid
from service.http.query import QueryModel
from service.http.responses import json_response, png_response
from service.http.routes.common import (
    ImageQuery,
    ScaleField,
    image_body_doc,
    image_limits,
    image_options,
    latent_rows,
    model_route,
)
from service.http.routes.sample import add_sample
from service.http.schemas import (
    DecodeRequest,
    ImagesResponse,
    InterpolateRequest,
    InterpolateResponse,
)
from service.http.uploads import (
    JSON,
    MULTIPART,
    Upload,
    media_type,
    read_json,
    read_upload,
    unsupported,
)
from service.images.decoding import OpenedImage
from service.images.preprocess import ImageOptions, input_rows
from service.inference.executor import Work
from service.model.latent import Array, InterpolationMethod, interpolate
from service.settings import Settings

DEFAULT_STEPS = 8


def router(settings: Settings) -> APIRouter:
    """The latent routes, with limits from `settings` declared in their OpenAPI."""
    api = APIRouter(prefix="/v1", tags=["latents"])
    _add_decode(api, settings)
    add_sample(api, settings)
    _add_interpolate(api, settings)
    return api


class DecodeQuery(QueryModel):
    scale: ScaleField = 1


def _add_decode(api: APIRouter, settings: Settings) -> None:
    @model_route(
        api,
        "POST",
        "/decode",
        query=DecodeQuery,
        result=ImagesResponse,
        description="A PNG (a grid for several z), or JSON with `Accept: application/json`.",
        png=True,
        body=_decode_body_doc(settings.max_batch),
    )
    async def decode(request: Request) -> Response:
        """Decode 1..max_batch latent vectors of the served model's latent_dim."""
        call = model_call(request, DecodeQuery)
        runtime = call.runtime
        body = await read_json(request, DecodeRequest)
        if len(body.z) > settings.max_batch:
            raise invalid(
                "body.z",
                f"at most {settings.max_batch} vectors, got {len(body.z)}",
                code="too_many_vectors",
            )
        z = latent_rows(body.z, runtime.manifest.latent_dim)
        shape = runtime.manifest.image_shape

        def compute() -> Response:
            probs = runtime.decode(z)
            if call.output == "png":
                return png_response(probs, shape, call.query.scale)
            return json_response(
                ImagesResponse(
                    model_version=runtime.version, image_shape=list(shape), probs=probs.tolist()
                )
            )

        return await call.services.executor.run("decode", Work(0, len(z)), compute)


class InterpolateQuery(ImageQuery):
    steps: int = DEFAULT_STEPS  # bounded by the settings: `interpolate_query`
    method: Annotated[
        InterpolationMethod, Field(description="`linear`, or `slerp` along the great circle.")
    ] = "linear"
    scale: ScaleField = 1


def interpolate_query(settings: Settings) -> type[InterpolateQuery]:
    """The interpolate query, its steps bounded by VAE_MAX_INTERPOLATE_STEPS."""

    class BoundedInterpolateQuery(InterpolateQuery):
        steps: Annotated[
            int,
            Field(
                ge=2,
                le=settings.max_interpolate_steps,
                description="Points on the path, end points included.",
            ),
        ] = min(DEFAULT_STEPS, settings.max_interpolate_steps)

    return BoundedInterpolateQuery


def _add_interpolate(api: APIRouter, settings: Settings) -> None:
    query_model = interpolate_query(settings)

    @model_route(
        api,
        "POST",
        "/interpolate",
        query=query_model,
        result=InterpolateResponse,
        description="A PNG strip, left to right, or JSON with `Accept: application/json`.",
        png=True,
        body=image_body_doc(2, min_files=2, raw=False, json_schema=_interpolate_schema()),
    )
    async def interpolate_route(request: Request) -> Response:
        """Interpolate between two images (multipart, their mu) or two z (JSON)."""
        call = model_call(request, query_model)
        runtime, query = call.runtime, call.query
        media = media_type(request)
        if media not in (JSON, MULTIPART):
            raise unsupported(media, (MULTIPART, JSON))
        upload, ends = None, None
        if media == JSON:
            body = await read_json(request, InterpolateRequest)
            ends = latent_rows(body.z, runtime.manifest.latent_dim)
        else:
            upload = await read_upload(request, image_limits(settings, max_batch=2))
        options = image_options(runtime, query.preprocess, query.binarize)
        compute = partial(_interpolated, call, options, upload, ends)
        work = Work(0, query.steps + 2) if upload is None else Work(upload.pixels, query.steps + 4)
        return await call.services.executor.run("interpolate", work, compute)


def _interpolated(
    call: ModelCall[InterpolateQuery],
    options: ImageOptions,
    upload: Upload | None,
    ends: Array | None,
) -> Response:
    """An interpolation's answer; the end points are the mu of the two uploaded images
    (blocking work: reads and encodes them), or the two z given."""
    runtime, query = call.runtime, call.query
    if upload is not None:
        ends = runtime.encode(input_rows(_two(upload.images()), options))[0]
    assert ends is not None
    z = interpolate(ends[0], ends[1], query.steps, query.method)
    probs = runtime.decode(z)
    if call.output == "png":
        return png_response(probs, options.shape, query.scale, columns=query.steps)
    return json_response(
        InterpolateResponse(
            model_version=runtime.version,
            image_shape=list(options.shape),
            method=query.method,
            z=z.tolist(),
            probs=probs.tolist(),
        )
    )


def _two(images: list[OpenedImage]) -> list[OpenedImage]:
    if len(images) != 2:
        raise invalid("files", f"exactly 2 images, got {len(images)}", code="need_two_images")
    return images


def _decode_body_doc(max_batch: int) -> dict[str, Any]:
    schema = DecodeRequest.model_json_schema()
    schema["properties"]["z"]["maxItems"] = max_batch
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _interpolate_schema() -> dict[str, Any]:
    return InterpolateRequest.model_json_schema()
