"""Image bytes -> the model's input: safe decoding and MNIST-style preprocessing.

MNIST was made from scanned digits by fitting the ink into a 20x20 box (keeping the aspect
ratio, anti-aliased) and placing it in 28x28 so that its centre of mass is the centre
(LeCun et al., "The MNIST database"). `mnist_like` does the same to a photo or drawing.
Arrays: gray [H, W] float32 in [0, 1] with 1 = white; model input [D] float32.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.latent import Array
from service.problems import ApiProblem, invalid

Preprocess = Literal["mnist", "none"]
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
FIT_FRACTION = 20 / 28  # MNIST fits the ink in 20x20 of the 28x28 field
INK_LEVEL = 0.2  # after contrast stretching, what counts as ink when cropping
MIN_CONTRAST = 0.1  # ink and background closer than this: the image is blank
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


@dataclass(frozen=True)
class ImageOptions:
    """How to turn one image into the model input (from the request's query)."""

    preprocess: Preprocess
    binarize: bool
    threshold: float  # the manifest's binarize_threshold
    shape: tuple[int, int]  # the manifest's image_shape


@dataclass(frozen=True)
class OpenedImage:
    """An image whose header was read and checked; its pixels are not decoded yet."""

    field: str
    image: Image.Image

    @property
    def pixels(self) -> int:
        return self.image.width * self.image.height


def open_image(data: bytes, field: str, max_pixels: int) -> OpenedImage:
    """Read the header only: the format must be allowed and the size within `max_pixels`.

    Checking width x height before decoding turns a decompression bomb into a 422.
    """
    if not data:
        raise invalid(field, "empty; expected an image (PNG, JPEG, WebP, BMP or GIF)", code="empty")
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
        raise invalid(field, "an animated image; send a single frame", code="animated_image")
    return OpenedImage(field, image)


def model_input(opened: OpenedImage, options: ImageOptions) -> Array:
    """Decode, preprocess and (unless asked not to) binarise one image: [D] float32."""
    gray = decode_gray(opened)
    if options.preprocess == "mnist":
        x = mnist_like(gray, options.shape, opened.field)
    elif gray.shape != options.shape:
        h, w = options.shape
        raise invalid(
            opened.field,
            f"preprocess=none needs a {w}x{h} image, got {gray.shape[1]}x{gray.shape[0]}; "
            "use preprocess=mnist for other sizes",
            code="wrong_size",
        )
    else:
        x = gray
    if options.binarize:
        x = (x > options.threshold).astype(np.float32)
    return x.reshape(-1)


def decode_gray(opened: OpenedImage) -> Array:
    """Decode all pixels to gray [H, W] in [0, 1].

    Transparency is flattened onto a background that contrasts with the visible ink (a canvas
    drawing is ink on a transparent background); 16-bit images keep their full range.
    """
    image = opened.image
    try:
        image.load()
        if image.mode in _WIDE_MODES:
            return _wide_gray(np.asarray(image), image.mode)
        if image.mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / np.float32(255.0)
            gray = np.asarray(image.convert("RGBA").convert("L"), dtype=np.float32) / 255.0
            return _flatten_alpha(gray.astype(np.float32), rgba[..., 3])
        if image.mode != "L":  # converting an "L" image would only copy it
            image = image.convert("L")
        return np.asarray(image, dtype=np.float32) / np.float32(255.0)
    except Exception as exc:  # truncated data, bad CRC, decoder errors of every kind
        raise _corrupt(opened.field, exc) from exc


def mnist_like(gray: Array, shape: tuple[int, int], field: str) -> Array:
    """Grayscale -> MNIST-like [H, W]: invert a light background, crop to the ink, fit the
    ink in 20x20 keeping its aspect ratio, and centre it by its centre of mass."""
    ink = _ink(gray, field)
    marked = ink > INK_LEVEL
    rows = np.flatnonzero(marked.any(axis=1))
    cols = np.flatnonzero(marked.any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    fitted = _fit(crop, round(min(shape) * FIT_FRACTION))
    row_mass = fitted.sum(axis=1)
    if float(row_mass.sum()) <= 0.0:  # ink too sparse to survive the reduction
        raise invalid(field, "no ink found (the image is blank); send a digit", code="blank_image")
    return _centre_by_mass(fitted, row_mass, shape)


def _ink(gray: Array, field: str) -> Array:
    """Ink as 1 and background as 0, contrast-stretched; a light border means a light page."""
    level = _border_level(gray)
    if level > 0.5:  # the border's median of 1 - gray is 1 - the median of gray
        ink, background = 1.0 - gray, 1.0 - level
    else:
        ink, background = gray, level
    peak = float(ink.max())
    if peak - background < MIN_CONTRAST:
        raise invalid(field, "no ink found (the image is blank); send a digit", code="blank_image")
    if background == 0.0 and peak == 1.0:  # full contrast already (MNIST itself): no stretch
        return np.asarray(ink, dtype=np.float32)
    return np.asarray(np.clip((ink - background) / (peak - background), 0, 1), dtype=np.float32)


def _border_level(values: Array) -> float:
    """The median of the outermost rows and columns: the background's level.

    np.median's own overhead is ~10x the sort of these few values; the result is the same.
    """
    border = np.sort(np.concatenate([values[0], values[-1], values[:, 0], values[:, -1]]))
    half = len(border) // 2
    if len(border) % 2:
        return float(border[half])
    return float((border[half - 1] + border[half]) / border.dtype.type(2))


def _fit(crop: Array, box: int) -> Array:
    """Resize so the longer side is `box` pixels, keeping the aspect ratio (Lanczos)."""
    h, w = crop.shape
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):  # already fitted (every MNIST digit; `crop` is in [0, 1])
        return crop
    resized = Image.fromarray(crop.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _centre_by_mass(ink: Array, row_mass: Array, shape: tuple[int, int]) -> Array:
    """Place `ink` (whose row sums are `row_mass`, not all zero) in a zero canvas of `shape`
    with its centre of mass at the centre."""
    canvas = np.zeros(shape, dtype=np.float32)
    h, w = ink.shape
    total = float(row_mass.sum())
    cy = float(row_mass @ np.arange(h)) / total
    cx = float(ink.sum(axis=0) @ np.arange(w)) / total
    top = min(max(round((shape[0] - 1) / 2 - cy), 0), shape[0] - h)
    left = min(max(round((shape[1] - 1) / 2 - cx), 0), shape[1] - w)
    canvas[top : top + h, left : left + w] = ink
    return canvas


def _wide_gray(values: np.ndarray, mode: str) -> Array:
    """16-bit, 32-bit integer or float gray to [0, 1]."""
    v = values.astype(np.float32)
    if mode.startswith("I;16"):
        top = 65535.0
    else:  # "I" and "F" carry no declared range: infer it from the values
        peak = float(v.max(initial=0.0))
        top = 1.0 if mode == "F" and peak <= 1.0 else (255.0 if peak <= 255.0 else 65535.0)
    return np.asarray(np.clip(v / np.float32(top), 0.0, 1.0), dtype=np.float32)


def _flatten_alpha(gray: np.ndarray, alpha: Array) -> Array:
    """Composite over white when the visible ink is dark, over black when it is light."""
    weight = float(alpha.sum())
    ink_level = float((gray * alpha).sum()) / weight if weight > 0 else 0.0
    background = 1.0 if ink_level < 0.5 else 0.0
    return np.asarray(alpha * gray + (1.0 - alpha) * background, dtype=np.float32)


def _too_large(field: str, max_pixels: int, size: tuple[int, int] | None = None) -> ApiProblem:
    got = f"{size[0]}x{size[1]}" if size else "more"
    return invalid(
        field,
        f"the image has {got} pixels; at most {max_pixels} (width x height)",
        code="image_too_large",
    )


def _not_an_image(field: str) -> ApiProblem:
    return invalid(field, "not an image; expected PNG, JPEG, WebP, BMP or GIF", code="not_an_image")


def _corrupt(field: str, exc: Exception) -> ApiProblem:
    reason = str(exc) or type(exc).__name__
    return invalid(field, f"a corrupt or truncated image ({reason})", code="corrupt_image")
