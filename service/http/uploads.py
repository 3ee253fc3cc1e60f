"""Request bodies -> inputs: images (raw or multipart) and JSON documents.

The body size limit is enforced while the body streams in (service.middleware); here the
Content-Type decides how the bytes are read, and anything else is a 415.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import anyio
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from service.http.multipart import parse_multipart
from service.http.problems import ApiProblem, from_errors, invalid
from service.images.decoding import EncodedImage, OpenedImage, check_total, opened, read_header

M = TypeVar("M", bound=BaseModel)
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif")
RAW_TYPES = (*IMAGE_TYPES, "application/octet-stream")  # octet-stream: the format is sniffed
MULTIPART = "multipart/form-data"
JSON = "application/json"
FILES_FIELD = "files"
INLINE_MAX_JSON_BYTES = 64 * 1024  # larger JSON bodies are parsed off the event loop
# A multipart body this small (a few digits) is parsed, and its images' headers read, on the
# event loop (~30 us a file), so that its pixel count is known and a small batch can join the
# inference thread's batches; larger bodies are parsed in the job, off the loop.
INLINE_MAX_MULTIPART_BYTES = 4 * 1024


@dataclass(frozen=True)
class ImageLimits:
    """How many images a request may carry, and how large, one by one and all together."""

    max_batch: int
    max_pixels: int  # width x height of one image
    max_request_pixels: int  # of all of them


@dataclass(frozen=True)
class Upload:
    """The images of one request: read as far as the event loop may (a raw body, or a small
    multipart body: plain PNGs' headers), or still multipart bytes."""

    read: list[OpenedImage | EncodedImage] | None
    body: bytes
    content_type: str
    limits: ImageLimits  # the limits it was read with, which parsing the body later applies too

    @property
    def count(self) -> int | None:
        """How many images; None until a multipart body is parsed."""
        return None if self.read is None else len(self.read)

    @property
    def pixels(self) -> int | None:
        """Source pixels to decode; None until every header has been read."""
        if self.read is None or not all(isinstance(i, OpenedImage) for i in self.read):
            return None
        return sum(i.pixels for i in self.read if isinstance(i, OpenedImage))

    def images(self) -> list[OpenedImage]:
        """The images with their headers read and checked, the request's pixel budget
        included (blocking work, for an image that is not a plain PNG or a multipart body
        not parsed yet: call it in the job)."""
        read = self.read
        if read is None:
            read = read_files(self.body, self.content_type, self.limits)
        images = [opened(image, self.limits.max_pixels) for image in read]
        check_total(images, self.limits.max_request_pixels, _images_field(images))
        return images


def media_type(request: Request) -> str:
    """The Content-Type without parameters, lower case ('' when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_upload(request: Request, limits: ImageLimits) -> Upload:
    """Read the body; a single raw image, or a small multipart body, has what headers the
    event loop may read checked at once (cheap)."""
    media = media_type(request)
    if media not in (*RAW_TYPES, MULTIPART):
        raise unsupported(media, (*RAW_TYPES, MULTIPART))
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    read: list[OpenedImage | EncodedImage] | None = None
    if media != MULTIPART:
        read = [read_header(body, "body", limits.max_pixels)]
    elif len(body) <= INLINE_MAX_MULTIPART_BYTES:
        read = read_files(body, content_type, limits)
    upload = Upload(read, body, content_type, limits)
    if upload.pixels is not None:  # every header read: the budget can be checked now
        headers = [i for i in read or () if isinstance(i, OpenedImage)]
        check_total(headers, limits.max_request_pixels, _images_field(headers))
    return upload


def read_files(
    body: bytes, content_type: str, limits: ImageLimits
) -> list[OpenedImage | EncodedImage]:
    """The parts of a multipart body that carry images (field 'files', or any file part),
    plain PNGs with their headers read."""
    parts = parse_multipart(body, content_type, max_parts=4 * limits.max_batch + 16)
    files = [p for p in parts if p.name == FILES_FIELD or p.filename is not None]
    if not files:
        raise invalid(
            FILES_FIELD,
            f"no file part; send 1..{limits.max_batch} images as form field '{FILES_FIELD}'",
            code="no_files",
        )
    if len(files) > limits.max_batch:
        raise invalid(
            FILES_FIELD,
            f"at most {limits.max_batch} images per request, got {len(files)}",
            code="too_many_files",
        )
    return [
        read_header(bytes(p.data), f"{FILES_FIELD}[{i}]", limits.max_pixels)
        for i, p in enumerate(files)
    ]


def _images_field(images: list[OpenedImage]) -> str:
    """Where a request's images are: the body, or the multipart field."""
    return "body" if len(images) == 1 and images[0].field == "body" else FILES_FIELD


async def read_json(request: Request, model: type[M]) -> M:
    """Validate an application/json body against `model` (pydantic's parser bounds nesting)."""
    media = media_type(request)
    if media != JSON and not media.endswith("+json"):
        raise unsupported(media, (JSON,))
    body = await request.body()
    try:
        if len(body) <= INLINE_MAX_JSON_BYTES:
            return model.model_validate_json(body)
        return await anyio.to_thread.run_sync(model.model_validate_json, body)
    except ValidationError as exc:
        raise from_errors(exc.errors(include_url=False), ("body",)) from exc


def unsupported(media: str, accepted: tuple[str, ...]) -> ApiProblem:
    """415 naming the Content-Type sent and the ones accepted."""
    sent = media or "no Content-Type"
    return ApiProblem(
        415,
        "unsupported-media-type",
        f"header.content-type: {sent} is not accepted; send one of: {', '.join(accepted)}",
        title="Unsupported media type",
        field="header.content-type",
    )
