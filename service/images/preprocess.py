"""Gray pixels -> the model's input: MNIST-style preprocessing (decoding: service.decoding).

MNIST was made from scanned digits by fitting the ink into a 20x20 box (keeping the aspect
ratio, anti-aliased) and placing it in 28x28 so that its centre of mass is the centre
(LeCun et al., "The MNIST database"). `model_inputs` does the same to a photo or drawing.
Arrays: gray [H, W] float32 in [0, 1] with 1 = white; model input [D] float32.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import numpy.typing as npt
from PIL import Image

from service.images.decoding import OpenedImage, decode
from service.images.errors import ImageError

Array = npt.NDArray[np.float32]
Preprocess = Literal["mnist", "none"]
FIT_FRACTION = 20 / 28  # MNIST fits the ink in 20x20 of the 28x28 field
INK_LEVEL = 0.2  # after contrast stretching, what counts as ink when cropping
MIN_CONTRAST = 0.1  # ink and background closer than this: the image is blank
GROUP_MAX_PIXELS = 64 * 64  # larger images are preprocessed one by one, as decoded


@dataclass(frozen=True)
class ImageOptions:
    """How to turn one image into the model input (from the request's query)."""

    preprocess: Preprocess
    binarize: bool
    threshold: float  # the manifest's binarize_threshold
    shape: tuple[int, int]  # the manifest's image_shape


def input_rows(images: Sequence[OpenedImage], options: ImageOptions) -> Array:
    """`model_inputs` of images sharing `options` as [B, D]; the first problem is raised."""
    x = stack_rows(model_inputs([(image, options) for image in images]))
    if isinstance(x, ImageError):
        raise x
    return x


def stack_rows(rows: Sequence[Array | ImageError]) -> Array | ImageError:
    """One request's `model_inputs` -> [B, D], or the first image's problem (which fails the
    request). One row skips np.stack's checks, a few us at batch 1."""
    arrays = [row for row in rows if isinstance(row, np.ndarray)]
    if len(arrays) < len(rows):
        return next(row for row in rows if isinstance(row, ImageError))
    return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)


def model_inputs(images: Sequence[tuple[OpenedImage, ImageOptions]]) -> list[Array | ImageError]:
    """Decode, preprocess and binarise images, each as its options say: [D] float32 each, or
    the problem with that image (which fails it alone).

    Each image is decoded on its own. Small ones (GROUP_MAX_PIXELS) of one size, pixel type
    and options are then preprocessed together, each numpy call covering all of them: a call
    costs microseconds whatever its size, and the inference thread takes ~16 images at a time
    under load (docs/benchmarks.md). A larger image is preprocessed as soon as it is decoded,
    so that only one large image's pixels are held at a time. An image's result never
    depends on the others it goes with.
    """
    results: list[Array | ImageError | None] = [None] * len(images)
    groups: dict[tuple[tuple[int, ...], str, ImageOptions], list[tuple[int, np.ndarray]]] = {}
    for i, (opened, options) in enumerate(images):
        try:
            pixels = decode(opened)
        except ImageError as problem:
            results[i] = problem
            continue
        if pixels.size > GROUP_MAX_PIXELS:
            results[i] = _group_inputs(_unit(pixels[None]), options, [opened.field])[0]
            continue
        groups.setdefault((pixels.shape, pixels.dtype.str, options), []).append((i, pixels))
    for (_, _, options), members in groups.items():
        fields = [images[i][0].field for i, _ in members]
        batch = [pixels for _, pixels in members]
        gray = _unit(batch[0][None] if len(batch) == 1 else np.stack(batch))
        for (i, _), row in zip(members, _group_inputs(gray, options, fields), strict=True):
            results[i] = row
    return cast(list[Array | ImageError], results)


def _group_inputs(
    gray: Array, options: ImageOptions, fields: list[str]
) -> list[Array | ImageError]:
    """gray [B, H, W] in [0, 1] -> each image's [D] input, or its error."""
    if options.preprocess == "mnist":
        x, blank = _mnist_like(gray, options.shape)
    elif gray.shape[1:] != options.shape:
        (h, w), (got_h, got_w) = options.shape, gray.shape[1:]
        message = (
            f"preprocess=none needs a {w}x{h} image, got {got_w}x{got_h}; "
            "use preprocess=mnist for other sizes"
        )
        return [ImageError(field, "wrong_size", message) for field in fields]
    else:
        x, blank = gray, [False] * len(fields)
    if options.binarize:
        x = (x > options.threshold).astype(np.float32)
    rows = x.reshape(len(fields), -1)
    return [
        _blank(field) if is_blank else row
        for row, is_blank, field in zip(rows, blank, fields, strict=True)
    ]


def _unit(pixels: np.ndarray) -> Array:
    """uint8 -> float32 in [0, 1] (/255); float32 as it is."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / np.float32(255.0)
    return pixels


def _mnist_like(gray: Array, shape: tuple[int, int]) -> tuple[Array, list[bool]]:
    """Grayscale [B, H, W] -> MNIST-like [B, *shape], and which images are blank (their
    slots are all 0): invert a light background, crop to the ink, fit the ink in 20x20
    keeping its aspect ratio, and centre it by its centre of mass."""
    ink, blank = _ink(gray)
    # Rows and columns holding ink: a max along an axis saves 3-6 us over any() (bench/idioms.py).
    rows = ink.max(axis=2) > INK_LEVEL  # [B, H]
    cols = ink.max(axis=1) > INK_LEVEL  # [B, W]
    tops, lefts = rows.argmax(axis=1).tolist(), cols.argmax(axis=1).tolist()
    bottoms = (rows.shape[1] - rows[:, ::-1].argmax(axis=1)).tolist()
    rights = (cols.shape[1] - cols[:, ::-1].argmax(axis=1)).tolist()
    box = round(min(shape) * FIT_FRACTION)
    fitted = np.zeros((len(gray), box, box), dtype=np.float32)  # each fitted at the top left
    sizes: list[tuple[int, int]] = []
    for i, is_blank in enumerate(blank):
        h = w = 0
        if not is_blank:
            crop = _fit(ink[i, tops[i] : bottoms[i], lefts[i] : rights[i]], box)
            h, w = crop.shape
            fitted[i, :h, :w] = crop
        sizes.append((h, w))
    canvas, placed = _centre_by_mass(fitted, sizes, shape)
    return canvas, [not p for p in placed]


def _ink(gray: Array) -> tuple[Array, list[bool]]:
    """Ink as 1 and background as 0, contrast-stretched, and which images are blank: a light
    border means a light page; ink and background closer than MIN_CONTRAST mean no ink."""
    levels = _border_levels(gray)
    light = [level > 0.5 for level in levels]
    ink = gray
    if any(light):
        ink = np.where(np.array(light)[:, None, None], np.float32(1.0) - gray, gray)
    peaks = ink.max(axis=(1, 2)).tolist()
    blanks: list[bool] = []
    offsets, spans = [], []  # the stretch: (ink - offset) / span
    stretch = False
    for level, is_light, peak in zip(levels, light, peaks, strict=True):
        background = 1.0 - level if is_light else level  # the median of 1 - g is 1 - that of g
        blank = peak - background < MIN_CONTRAST
        blanks.append(blank)
        if blank or (background == 0.0 and peak == 1.0):  # full contrast already (MNIST)
            offsets.append(0.0)
            spans.append(1.0)
        else:
            offsets.append(background)
            spans.append(peak - background)
            stretch = True
    if not stretch:
        return ink, blanks
    offset = np.array(offsets, dtype=np.float32)[:, None, None]
    span = np.array(spans, dtype=np.float32)[:, None, None]
    return np.clip((ink - offset) / span, 0, 1), blanks


def _border_levels(values: Array) -> list[float]:
    """The median of each image's outermost rows and columns: its background's level.

    np.median's own overhead is ~10x the sort of these few values; the result is the same.
    """
    border = np.concatenate(
        [values[:, 0], values[:, -1], values[:, :, 0], values[:, :, -1]], axis=1
    )
    border.sort(axis=1)
    half = border.shape[1] // 2
    if border.shape[1] % 2:
        return cast(list[float], border[:, half].tolist())
    middle = (border[:, half - 1] + border[:, half]) / border.dtype.type(2)
    return cast(list[float], middle.tolist())


def _fit(crop: Array, box: int) -> Array:
    """Resize so the longer side is `box` pixels, keeping the aspect ratio (Lanczos)."""
    h, w = crop.shape
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):  # already fitted (every MNIST digit; `crop` is in [0, 1])
        return crop
    resized = Image.fromarray(crop.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _centre_by_mass(
    fitted: Array, sizes: list[tuple[int, int]], shape: tuple[int, int]
) -> tuple[Array, list[bool]]:
    """Place each fitted image (at the top left of `fitted` [B, box, box], `sizes` its
    height and width) in a zero canvas of `shape` with its centre of mass at the centre;
    and whether it was placed (an image with no ink left after fitting is not).

    The masses are summed in float64, where sums of these float32 pixels are exact or all
    but: a centre exactly between two pixels rounds the same way every time (float32 sums
    moved 3 of MNIST's 60,000 digits a pixel the wrong way).
    """
    count, box = fitted.shape[:2]
    masses = fitted.astype(np.float64)
    row_mass, col_mass = masses.sum(axis=2), masses.sum(axis=1)  # [B, box] each
    # Per image: sum_y y * row_mass[y], sum_x x * col_mass[x] and the total mass, as explicit
    # sums (not @: BLAS may order a row's sum by the batch around it).
    weighted = np.concatenate([row_mass, col_mass, row_mass], axis=1) * _moment_weights(box)
    moments = weighted.reshape(count, 3, box).sum(axis=2).tolist()
    canvas = np.zeros((count, *shape), dtype=np.float32)
    placed = []
    for i, ((h, w), (y, x, total)) in enumerate(zip(sizes, moments, strict=True)):
        placed.append(total > 0.0)  # else blank, or ink too sparse to survive the fitting
        if total > 0.0:
            top = min(max(round((shape[0] - 1) / 2 - y / total), 0), shape[0] - h)
            left = min(max(round((shape[1] - 1) / 2 - x / total), 0), shape[1] - w)
            canvas[i, top : top + h, left : left + w] = fitted[i, :h, :w]
    return canvas, placed


@functools.cache
def _moment_weights(box: int) -> npt.NDArray[np.float64]:
    """[3 * box]: the positions 0..box-1 (for y, then x), then ones (for the total)."""
    positions = np.arange(box, dtype=np.float64)
    return np.concatenate([positions, positions, np.ones(box)])


def _blank(field: str) -> ImageError:
    return ImageError(field, "blank_image", "no ink found (the image is blank); send a digit")
