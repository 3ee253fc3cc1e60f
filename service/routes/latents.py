"""Routes that work in latent space: decode, sample, interpolate.

No `from __future__ import annotations` here: the parameter types close over `settings`.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field
from starlette.responses import Response

from service.deps import ModelCall, model_call, new_seed, rng_for
from service.latent import MAX_TEMPERATURE, InterpolationMethod, interpolate
from service.offload import Cost
from service.preprocess import OpenedImage, input_rows
from service.problems import invalid, problem_responses
from service.query import QueryModel, openapi_parameters
from service.responses import image_response_doc, json_response, png_response
from service.routes.common import (
    ImageQuery,
    ScaleField,
    SeedField,
    image_body_doc,
    image_options,
    latent_rows,
)
from service.schemas import (
    DecodeRequest,
    ImagesResponse,
    InterpolateRequest,
    InterpolateResponse,
    SampleResponse,
)
from service.settings import Settings
from service.uploads import JSON, MULTIPART, media_type, read_json, read_upload, unsupported

ERRORS = problem_responses(408, 413, 415, 422, 503)
DEFAULT_STEPS = 8
DEFAULT_N = 16


def router(settings: Settings) -> APIRouter:
    """The latent routes, with limits from `settings` declared in their OpenAPI."""
    api = APIRouter(prefix="/v1", tags=["latents"])
    _add_decode(api, settings)
    _add_sample(api, settings)
    _add_interpolate(api, settings)
    return api


class DecodeQuery(QueryModel):
    scale: ScaleField = 1


def _add_decode(api: APIRouter, settings: Settings) -> None:
    @api.post(
        "/decode",
        responses={
            **image_response_doc(
                ImagesResponse,
                "A PNG (a grid for several z), or JSON with `Accept: application/json`.",
            ),
            **problem_responses(408, 413, 415, 422, 503),
        },
        openapi_extra={
            **_decode_body_doc(settings.max_batch),
            "parameters": openapi_parameters(DecodeQuery),
        },
    )
    async def decode(
        request: Request,
        call: Annotated[ModelCall[DecodeQuery], Depends(model_call(DecodeQuery))],
    ) -> Response:
        """Decode 1..max_batch latent vectors of the served model's latent_dim."""
        runtime, output, scale = call.runtime, call.output, call.query.scale
        body = await read_json(request, DecodeRequest)
        if len(body.z) > settings.max_batch:
            raise invalid(
                "body.z",
                f"at most {settings.max_batch} vectors, got {len(body.z)}",
                code="too_many_vectors",
            )
        z = latent_rows(body.z, runtime.manifest.latent_dim)
        shape = runtime.manifest.image_shape

        def job() -> Response:
            probs = runtime.decode(z)
            if output == "json":
                return json_response(
                    ImagesResponse(
                        model_version=runtime.version, image_shape=list(shape), probs=probs.tolist()
                    )
                )
            return png_response(probs, shape, scale)

        return await call.services.executor.run("decode", Cost(0, len(z)), job)


def _add_sample(api: APIRouter, settings: Settings) -> None:
    class SampleQuery(QueryModel):
        n: Annotated[
            int,
            Field(ge=1, le=settings.max_sample_n, description="How many samples.", examples=[16]),
        ] = min(DEFAULT_N, settings.max_sample_n)
        seed: SeedField = None
        temperature: Annotated[
            float,
            Field(
                ge=0.0,
                le=MAX_TEMPERATURE,
                allow_inf_nan=False,
                description="z ~ N(0, temperature^2 I).",
            ),
        ] = 1.0
        scale: ScaleField = 1

    @api.get(
        "/sample",
        responses={
            **image_response_doc(
                SampleResponse,
                "A PNG grid, or JSON with "
                "`Accept: application/json`. The same seed gives the same bytes.",
            ),
            **problem_responses(422, 503),
        },
        openapi_extra={"parameters": openapi_parameters(SampleQuery)},
    )
    async def sample(
        call: Annotated[ModelCall[SampleQuery], Depends(model_call(SampleQuery))],
    ) -> Response:
        """Decode n draws from the prior: a PNG grid, or JSON with z and probabilities."""
        services, runtime, output, query = call.services, call.runtime, call.output, call.query
        n, temperature, scale = query.n, query.temperature, query.scale
        used_seed = new_seed(query.seed)
        shape = runtime.manifest.image_shape

        def job() -> Response:
            z, probs = runtime.sample(n, temperature, rng_for(used_seed))
            if output == "json":
                return json_response(
                    SampleResponse(
                        model_version=runtime.version,
                        image_shape=list(shape),
                        seed=used_seed,
                        temperature=temperature,
                        z=z.tolist(),
                        probs=probs.tolist(),
                    )
                )
            return png_response(probs, shape, scale, headers={"X-Seed": str(used_seed)})

        return await services.executor.run("sample", Cost(0, n), job)


def _add_interpolate(api: APIRouter, settings: Settings) -> None:
    class InterpolateQuery(ImageQuery):
        steps: Annotated[
            int,
            Field(
                ge=2,
                le=settings.max_interpolate_steps,
                description="Points on the path, end points included.",
            ),
        ] = min(DEFAULT_STEPS, settings.max_interpolate_steps)
        method: Annotated[
            InterpolationMethod, Field(description="`linear`, or `slerp` along the great circle.")
        ] = "linear"
        scale: ScaleField = 1

    body_doc = image_body_doc(2, min_files=2, raw=False, json_schema=_interpolate_schema())

    @api.post(
        "/interpolate",
        responses={
            **image_response_doc(
                InterpolateResponse,
                "A PNG strip, left to right, or JSON with `Accept: application/json`.",
            ),
            **ERRORS,
        },
        openapi_extra={**body_doc, "parameters": openapi_parameters(InterpolateQuery)},
    )
    async def interpolate_route(
        request: Request,
        call: Annotated[ModelCall[InterpolateQuery], Depends(model_call(InterpolateQuery))],
    ) -> Response:
        """Interpolate between two images (multipart, their mu) or two z (JSON)."""
        services, runtime, output, query = call.services, call.runtime, call.output, call.query
        steps, method, scale = query.steps, query.method, query.scale
        media = media_type(request)
        if media not in (JSON, MULTIPART):
            raise unsupported(media, (MULTIPART, JSON))
        upload, ends_json = None, None
        if media == JSON:
            ends_json = (await read_json(request, InterpolateRequest)).z
        else:
            upload = await read_upload(request, 2, settings.max_image_pixels)
        options = image_options(runtime, query.preprocess, query.binarize)

        def job() -> Response:
            if upload is None:
                ends = latent_rows(ends_json or [], runtime.manifest.latent_dim)
            else:
                images = _two(upload.images())
                ends = runtime.encode(input_rows(images, options))[0]
            z = interpolate(ends[0], ends[1], steps, method)
            probs = runtime.decode(z)
            if output == "json":
                return json_response(
                    InterpolateResponse(
                        model_version=runtime.version,
                        image_shape=list(options.shape),
                        method=method,
                        z=z.tolist(),
                        probs=probs.tolist(),
                    )
                )
            return png_response(probs, options.shape, scale, columns=steps)

        pixels = 0 if upload is None else None
        return await services.executor.run("interpolate", Cost(pixels, steps + 2), job)


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
