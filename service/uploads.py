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

from service.multipart import parse_multipart
from service.preprocess import OpenedImage, open_image
from service.problems import ApiProblem, from_errors, invalid

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
class Upload:
    """The images of one request: opened already (a raw body, a small multipart body) or
    still multipart bytes."""

    opened: list[OpenedImage] | None
    body: bytes
    content_type: str
    max_batch: int  # the limits it was read with, which parsing the body later applies too
    max_pixels: int

    @property
    def pixels(self) -> int | None:
        """Source pixels to decode; None until a multipart body is parsed."""
        return None if self.opened is None else sum(i.pixels for i in self.opened)

    def images(self) -> list[OpenedImage]:
        """The opened images; a multipart body not parsed yet is parsed now (blocking work:
        call it in the job)."""
        if self.opened is not None:
            return self.opened
        return open_files(self.body, self.content_type, self.max_batch, self.max_pixels)


def media_type(request: Request) -> str:
    """The Content-Type without parameters, lower case ('' when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_upload(request: Request, max_batch: int, max_pixels: int) -> Upload:
    """Read the body; a single raw image, or a small multipart body, has its images' headers
    checked at once (cheap)."""
    media = media_type(request)
    if media not in (*RAW_TYPES, MULTIPART):
        raise unsupported(media, (*RAW_TYPES, MULTIPART))
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    if media != MULTIPART:
        opened = [open_image(body, "body", max_pixels)]
    elif len(body) <= INLINE_MAX_MULTIPART_BYTES:
        opened = open_files(body, content_type, max_batch, max_pixels)
    else:
        opened = None
    return Upload(opened, body, content_type, max_batch, max_pixels)


def open_files(
    body: bytes, content_type: str, max_batch: int, max_pixels: int
) -> list[OpenedImage]:
    """The parts of a multipart body that carry images: field 'files', or any file part."""
    parts = parse_multipart(body, content_type, max_parts=4 * max_batch + 16)
    files = [p for p in parts if p.name == FILES_FIELD or p.filename is not None]
    if not files:
        raise invalid(
            FILES_FIELD,
            f"no file part; send 1..{max_batch} images as form field '{FILES_FIELD}'",
            code="no_files",
        )
    if len(files) > max_batch:
        raise invalid(
            FILES_FIELD,
            f"at most {max_batch} images per request, got {len(files)}",
            code="too_many_files",
        )
    return [
        open_image(bytes(p.data), f"{FILES_FIELD}[{i}]", max_pixels) for i, p in enumerate(files)
    ]


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
