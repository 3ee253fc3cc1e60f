"""Image bytes -> gray pixels, within bounds of time and memory.

On the event loop only a plain PNG's header is read (service.png: a struct walk of at most 64
chunks); any other file waits, as an `EncodedImage`, for a worker thread, where its structure
is checked (service.structure) and PIL reads its header. Width x height is checked against
the per-image and per-request limits before any pixel is decoded. Decoding applies the EXIF
orientation and reduces a large image (longest side over WORK_SIDE) by an integer factor, in
PIL and in uint8 (JPEG decodes at the reduced scale directly), so that the float work of
preprocessing never sees more than WORK_SIDE^2 pixels of one image.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.images import png
from service.images.errors import ImageError
from service.images.structure import check_structure

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
WORK_SIDE = 1024  # a longer image is reduced before preprocessing (the ink ends up 20x20)
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


@dataclass(frozen=True)
class EncodedImage:
    """An image not opened yet: it is not a plain PNG, so reading even its header is left
    to a worker thread (`open_image`)."""

    field: str
    data: bytes


@dataclass(frozen=True)
class OpenedImage:
    """An image whose header was read and checked; its pixels are not decoded yet."""

    field: str
    source: Image.Image | png.PlainPng  # PIL's image (it decodes on load), or a plain PNG

    @property
    def pixels(self) -> int:
        return self.source.width * self.source.height

    def image(self) -> Image.Image:
        """PIL's image; a plain PNG is decoded now."""
        source = self.source
        return source if isinstance(source, Image.Image) else png.decode(source)


def read_header(data: bytes, field: str, max_pixels: int) -> OpenedImage | EncodedImage:
    """What the event loop may do with an image: read a plain PNG's header (cheap, bounded)
    and check its size; anything else is left encoded."""
    if not data:
        raise ImageError(field, "empty", "empty; expected an image (PNG, JPEG, WebP, BMP or GIF)")
    plain = png.read_plain(data)
    if plain is None:
        return EncodedImage(field, data)
    if plain.width * plain.height > max_pixels:
        raise _too_large(field, max_pixels, (plain.width, plain.height))
    return OpenedImage(field, plain)


def open_image(data: bytes, field: str, max_pixels: int) -> OpenedImage:
    """Read the header only: the format must be allowed, its structure ordinary, and the
    size within `max_pixels` (a decompression bomb is a 422, never decoded). Blocking work
    whose cost grows with the file: call it off the event loop."""
    header = read_header(data, field, max_pixels)
    if isinstance(header, OpenedImage):
        return header
    check_structure(data, field)
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(field, max_pixels) from exc
    except UnidentifiedImageError as exc:
        raise _not_an_image(field) from exc
    except Exception as exc:  # PIL raises many types on malformed headers
        raise _corrupt(field, exc) from exc
    if image.width * image.height > max_pixels:
        raise _too_large(field, max_pixels, image.size)
    if getattr(image, "is_animated", False):
        raise ImageError(field, "animated_image", "an animated image; send a single frame")
    return OpenedImage(field, image)


def opened(image: OpenedImage | EncodedImage, max_pixels: int) -> OpenedImage:
    """The image with its header read (off the event loop for an encoded one)."""
    return (
        image if isinstance(image, OpenedImage) else open_image(image.data, image.field, max_pixels)
    )


def check_total(images: Sequence[OpenedImage], max_request_pixels: int, field: str) -> None:
    """All the images of a request together within `max_request_pixels` (before decoding)."""
    total = sum(image.pixels for image in images)
    if total > max_request_pixels:
        raise ImageError(
            field,
            "request_too_large",
            f"the images have {total} pixels in all (width x height); at most "
            f"{max_request_pixels} per request: send fewer or smaller images",
        )


def decode(opened: OpenedImage) -> np.ndarray:
    """All pixels as gray [H, W]: uint8 for 8-bit images, else float32 in [0, 1]; upright by
    the EXIF orientation, and reduced to at most WORK_SIDE a side.

    Transparency is flattened onto a background that contrasts with the visible ink (a canvas
    drawing is ink on a transparent background); 16-bit images keep their full range.
    """
    try:
        image = _loaded(opened)
        if image.mode in _WIDE_MODES:
            mode = image.mode  # I;16 has no reduce of its own: reduced as I, read as I;16
            image = _reduced(image.convert("I") if mode.startswith("I;16") else image)
            return _wide_gray(np.asarray(image), mode)
        if image.mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = _reduced(image.convert("RGBA"))
            gray = np.asarray(rgba.convert("L"), dtype=np.float32) / np.float32(255.0)
            alpha = np.asarray(rgba, dtype=np.float32)[..., 3] / np.float32(255.0)
            return _flatten_alpha(gray, alpha)
        if image.mode != "L":  # converting an "L" image would only copy it
            image = image.convert("L")
        return np.asarray(_reduced(image))
    except Exception as exc:  # truncated data, bad CRC, decoder errors of every kind
        raise _corrupt(opened.field, exc) from exc


def _loaded(opened: OpenedImage) -> Image.Image:
    """The decoded image, upright; a large JPEG is decoded at a reduced scale (its DCT
    scaling: 1/2, 1/4 or 1/8) and in gray when it has no alpha."""
    image = opened.image()
    factor = _factor(image.size)
    if factor > 1 and image.format == "JPEG":
        image.draft("L", (math.ceil(image.width / factor), math.ceil(image.height / factor)))
    image.load()
    if image.format in ("JPEG", "WEBP", "PNG"):  # the formats that carry EXIF here
        ImageOps.exif_transpose(image, in_place=True)
    return image


def _factor(size: tuple[int, int]) -> int:
    """The integer reduction that brings the longer side within WORK_SIDE."""
    return max(1, math.ceil(max(size) / WORK_SIDE))


def _reduced(image: Image.Image) -> Image.Image:
    """Box-average by the integer factor that fits WORK_SIDE (images within it as they are:
    their preprocessing is exactly what it was)."""
    factor = _factor(image.size)
    return image if factor == 1 else image.reduce(factor)


def _wide_gray(values: np.ndarray, mode: str) -> np.ndarray:
    """16-bit, 32-bit integer or float gray (`mode`, as the file declared it) to [0, 1]."""
    v = values.astype(np.float32)
    if mode.startswith("I;16"):
        top = 65535.0
    else:  # "I" and "F" carry no declared range: infer it from the values
        peak = float(v.max(initial=0.0))
        top = 1.0 if mode == "F" and peak <= 1.0 else (255.0 if peak <= 255.0 else 65535.0)
    return np.asarray(np.clip(v / np.float32(top), 0.0, 1.0), dtype=np.float32)


def _flatten_alpha(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite over white when the visible ink is dark, over black when it is light."""
    weight = float(alpha.sum())
    ink_level = float((gray * alpha).sum()) / weight if weight > 0 else 0.0
    background = 1.0 if ink_level < 0.5 else 0.0
    return np.asarray(alpha * gray + (1.0 - alpha) * background, dtype=np.float32)


def _too_large(field: str, max_pixels: int, size: tuple[int, int] | None = None) -> ImageError:
    got = f"{size[0]}x{size[1]}" if size else "more"
    return ImageError(
        field,
        "image_too_large",
        f"the image has {got} pixels; at most {max_pixels} (width x height)",
    )


def _not_an_image(field: str) -> ImageError:
    return ImageError(field, "not_an_image", "not an image; expected PNG, JPEG, WebP, BMP or GIF")


def _corrupt(field: str, exc: Exception) -> ImageError:
    reason = str(exc) or type(exc).__name__
    return ImageError(field, "corrupt_image", f"a corrupt or truncated image ({reason})")
