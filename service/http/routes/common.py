"""What the model routes share: declaring a route, query fields, and conversions."""

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.http.deps import MAX_SEED
from service.http.problems import invalid, problem_responses
from service.http.query import QueryModel, openapi_parameters
from service.http.responses import image_response_doc
from service.http.uploads import FILES_FIELD, IMAGE_TYPES, MULTIPART, ImageLimits
from service.images.grid import MAX_OUTPUT_SIDE, MAX_SCALE
from service.images.preprocess import ImageOptions, Preprocess
from service.model.latent import Array
from service.model.runtime import ModelRuntime
from service.settings import Settings

Handler = TypeVar("Handler", bound=Callable[..., Any])
BODY_ERRORS = (408, 413, 415, 422, 503)  # what a route that reads a body can answer


def model_route(
    api: APIRouter,
    method: str,
    path: str,
    *,
    query: type[QueryModel],
    result: type[BaseModel],
    description: str,
    png: bool = False,
    body: dict[str, Any] | None = None,
    errors: tuple[int, ...] = BODY_ERRORS,
) -> Callable[[Handler], Handler]:
    """Declare a model route: its query parameters and request body in OpenAPI (the handler
    reads them itself, with `deps.model_call` and `uploads`), its 200 (`result` as JSON,
    or a PNG unless Accept asks for JSON when `png`) and its problem+json errors."""
    ok: dict[int | str, Any] = (
        image_response_doc(result, description)
        if png
        else {200: {"model": result, "description": description}}
    )
    extra = {**(body or {}), "parameters": openapi_parameters(query)}
    return api.api_route(
        path, methods=[method], responses={**ok, **problem_responses(*errors)}, openapi_extra=extra
    )


PreprocessField = Annotated[
    Preprocess,
    Field(
        description="`mnist`: grayscale, invert a light background, crop to the ink, fit in "
        "20x20 keeping the aspect ratio, centre by centre of mass in 28x28. `none`: the image "
        "must already be 28x28, white ink on black, as MNIST."
    ),
]
BinarizeField = Annotated[
    bool,
    Field(description="Threshold pixels at the manifest's binarize_threshold, as in training."),
]
SeedField = Annotated[
    int | None,
    Field(
        ge=0,
        le=MAX_SEED,
        description="Seeds the request's own RNG: the same seed gives the "
        "same bytes. Drawn at random (and reported) when absent.",
        examples=[7],
    ),
]
ScaleField = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_SCALE,
        description="Integer upscaling of the PNG (nearest pixel), capped so that the PNG "
        f"stays within {MAX_OUTPUT_SIDE} pixels a side.",
    ),
]


class ImageQuery(QueryModel):
    """How an uploaded image becomes the model's input."""

    preprocess: PreprocessField = "mnist"
    binarize: BinarizeField = True


def image_options(runtime: ModelRuntime, preprocess: Preprocess, binarize: bool) -> ImageOptions:
    manifest = runtime.manifest
    return ImageOptions(preprocess, binarize, manifest.binarize_threshold, manifest.image_shape)


def image_limits(settings: Settings, max_batch: int | None = None) -> ImageLimits:
    """The image limits of a route (`max_batch` images, VAE_MAX_BATCH by default)."""
    return ImageLimits(
        max_batch=settings.max_batch if max_batch is None else max_batch,
        max_pixels=settings.max_image_pixels,
        max_request_pixels=settings.max_request_pixels,
    )


def latent_rows(z: list[list[float]], latent_dim: int, field: str = "body.z") -> Array:
    """JSON vectors -> [B, L] float32; each must have the served model's latent_dim."""
    for i, row in enumerate(z):
        if len(row) != latent_dim:
            raise invalid(
                f"{field}[{i}]",
                f"expected {latent_dim} floats (the served model's latent_dim), got {len(row)}",
                code="wrong_latent_size",
            )
    return np.asarray(z, dtype=np.float32).reshape(len(z), latent_dim)


def image_body_doc(
    max_files: int, *, min_files: int = 1, raw: bool = True, json_schema: Any = None
) -> dict[str, Any]:
    """OpenAPI requestBody: a raw image, a multipart batch under 'files', and optionally JSON."""
    binary = {"type": "string", "format": "binary"}
    content: dict[str, Any] = {t: {"schema": binary} for t in IMAGE_TYPES} if raw else {}
    files = {"type": "array", "items": binary, "minItems": min_files, "maxItems": max_files}
    content[MULTIPART] = {
        "schema": {"type": "object", "properties": {FILES_FIELD: files}, "required": [FILES_FIELD]}
    }
    if json_schema is not None:
        content["application/json"] = {"schema": json_schema}
    return {"requestBody": {"required": True, "content": content}}


def describe_latent(openapi: dict[str, Any], latent_dim: int) -> None:
    """Declare the served latent_dim on every JSON body with a `z` (it changes on a swap)."""
    for operation in (op for path in openapi.get("paths", {}).values() for op in path.values()):
        content = operation.get("requestBody", {}).get("content", {})
        schema = content.get("application/json", {}).get("schema", {})
        z = schema.get("properties", {}).get("z")
        if z is None:
            continue
        z["items"].update(minItems=latent_dim, maxItems=latent_dim)
        count = max(1, z.get("minItems", 1))
        schema["examples"] = [{"z": [[round(0.5 * i - 0.5, 2)] * latent_dim for i in range(count)]}]
