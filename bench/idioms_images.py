"""The image pipeline's cases of bench/idioms.py: preprocessing, decoding, PNG, grids."""

from __future__ import annotations

import dataclasses
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from ab import Case, equal, same_pixels
from harness import digit_png
from PIL import Image

from service.images import decoding, grid, png, preprocess

MNIST = preprocess.ImageOptions("mnist", True, 0.5, (28, 28))
BATCH = 16  # images the inference thread takes at a time at 16 connections


@dataclass(frozen=True)
class Digit:
    """The benchmark digit at each stage of the pipeline, as the service computes it."""

    data: bytes  # a 28x28 8-bit gray PNG
    plain: png.PlainPng
    image: Image.Image  # decoded, "L"
    gray: np.ndarray  # [1, 28, 28] float32 in [0, 1]
    ink: np.ndarray  # [1, 28, 28] after _ink
    crop: np.ndarray  # the ink's bounding box, [h, w]


def digit() -> Digit:
    data = digit_png()
    plain = png.read_plain(data)
    assert plain is not None
    image = png.decode(plain)
    image.load()
    gray = preprocess._unit(decoding.decode(decoding.OpenedImage("body", plain))[None])
    ink, _ = preprocess._ink(gray)
    ys, xs = np.nonzero(ink[0] > preprocess.INK_LEVEL)
    crop = ink[0, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return Digit(data, plain, image, gray, ink, crop)


# --- the plain forms (and one former idiom) -----------------------------------------------


def median_border(values: np.ndarray) -> list[float]:
    """preprocess._border_levels by np.median."""
    edges = [values[:, 0], values[:, -1], values[:, :, 0], values[:, :, -1]]
    return list(np.median(np.concatenate(edges, axis=1), axis=1).tolist())


def stretched_ink(gray: np.ndarray) -> tuple[np.ndarray, list[bool]]:
    """preprocess._ink without its shortcuts: always the inversion's np.where and the
    stretch, even when no image is light and every one has full contrast (MNIST)."""
    levels = preprocess._border_levels(gray)
    light = [level > 0.5 for level in levels]
    ink = np.where(np.array(light)[:, None, None], np.float32(1.0) - gray, gray)
    peaks = ink.max(axis=(1, 2)).tolist()
    grounds = [1.0 - level if lit else level for level, lit in zip(levels, light, strict=True)]
    blanks = [p - g < preprocess.MIN_CONTRAST for p, g in zip(peaks, grounds, strict=True)]
    stretch = [
        (0.0, 1.0) if b else (g, p - g) for b, g, p in zip(blanks, grounds, peaks, strict=True)
    ]
    offset, span = np.array(stretch, dtype=np.float32).T[:, :, None, None]
    return np.clip((ink - offset) / span, 0, 1), blanks


def resized(crop: np.ndarray, box: int) -> np.ndarray:
    """preprocess._fit without its early return (PIL's resize to the same size copies)."""
    h, w = crop.shape
    size = (max(1, round(w * box / max(h, w))), max(1, round(h * box / max(h, w))))
    image = Image.fromarray(crop.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)


class PlainPngTuple(NamedTuple):
    """png.PlainPng as it was, a NamedTuple (reverted: issue 15)."""

    width: int
    height: int
    mode: str
    data: bytes
    chunks: list[tuple[int, int]]
    idat: tuple[int, int]


def pil_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=png.PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def preprocess_cases(d: Digit) -> Iterator[Case]:
    row, pixels = d.gray.reshape(-1), np.asarray(d.image)
    yield Case(
        "one row: `x[None]`, not np.stack",
        "preprocess.stack_rows",
        lambda: row[None],
        lambda: np.stack([row]),
        1,
        equal,
    )
    yield Case(
        "one image: `x[None]`, not np.stack",
        "preprocess.model_inputs",
        lambda: pixels[None],
        lambda: np.stack([pixels]),
        1,
        equal,
    )
    yield Case(
        "border median by sort, not np.median",
        "preprocess._border_levels",
        lambda: preprocess._border_levels(d.gray),
        lambda: median_border(d.gray),
        1,
        equal,
    )
    ink, level = d.ink, preprocess.INK_LEVEL

    def by_any() -> list[np.ndarray]:
        mask = ink > level
        return [np.any(mask, axis=2), np.any(mask, axis=1)]

    yield Case(
        "ink rows, columns: `.max() >`, not any()",
        "preprocess._mnist_like",
        lambda: [ink.max(axis=2) > level, ink.max(axis=1) > level],
        by_any,
        1,
        equal,
    )
    yield Case(
        "no inversion or stretch when not needed",
        "preprocess._ink",
        lambda: preprocess._ink(d.gray),
        lambda: stretched_ink(d.gray),
        1,
        equal,
    )
    yield Case(
        "no resize when already fitted",
        "preprocess._fit",
        lambda: preprocess._fit(d.crop, 20),
        lambda: resized(d.crop, 20),
        1,
        equal,
    )
    weights = preprocess._moment_weights
    yield Case(
        "functools.cache on the moment weights",
        "preprocess._moment_weights",
        lambda: weights(20),
        lambda: weights.__wrapped__(20),
        1,
        equal,
    )
    batch = [(decoding.OpenedImage("body", d.plain), MNIST)] * BATCH
    yield Case(
        f"{BATCH} images preprocessed together, per image",
        "preprocess.model_inputs",
        lambda: preprocess.model_inputs(batch),
        lambda: [preprocess.model_inputs([item])[0] for item in batch],
        1,
        equal,
        BATCH,
    )


def codec_cases(d: Digit) -> Iterator[Case]:
    image, pixels = d.image, np.asarray(d.image)
    yield Case(
        "gray image not converted to itself",
        "decoding.decode",
        lambda: image if image.mode == "L" else image.convert("L"),
        lambda: image.convert("L"),
        1,
        lambda a, b: a.tobytes() == b.tobytes(),
    )
    yield Case(
        "(reverted) np.frombuffer(tobytes()), not np.asarray",
        "decoding.decode",
        lambda: np.frombuffer(image.tobytes(), np.uint8).reshape(image.height, image.width),
        lambda: np.asarray(image),
        1,
        equal,
    )
    fields = tuple(getattr(d.plain, f.name) for f in dataclasses.fields(d.plain))
    yield Case(
        "(reverted) PlainPng a NamedTuple, not a frozen dataclass",
        "png.read_plain",
        lambda: PlainPngTuple(*fields),
        lambda: png.PlainPng(*fields),
        1,
    )
    raw = np.pad(pixels, ((0, 0), (1, 0))).tobytes()  # the rows as png.encode writes them
    yield Case(
        "small PNG stored, not zlib level 1",
        "png.encode",
        lambda: zlib.compress(raw, 0),
        lambda: zlib.compress(raw, png.PNG_COMPRESS_LEVEL),
        1,
        lambda a, b: zlib.decompress(a) == zlib.decompress(b),
    )
    cells = pixels[None]
    yield Case(
        "one image: no grid tiling",
        "grid.render",
        lambda: cells[0] if len(cells) == 1 else grid._tile(cells, 1),
        lambda: grid._tile(cells, 1),
        1,
        equal,
    )
    yield Case(
        "hand-written PNG encoder, not PIL's",
        "png.encode",
        lambda: png.encode(pixels),
        lambda: pil_png(pixels),
        1,
        same_pixels,
    )

    def plain_path() -> np.ndarray:
        header = decoding.read_header(d.data, "body", 2**24)
        assert isinstance(header, decoding.OpenedImage)
        return decoding.decode(header)

    def pil_path() -> np.ndarray:
        decoding.check_structure(d.data, "body")  # what open_image does for other files
        source = Image.open(io.BytesIO(d.data), formats=decoding.FORMATS)
        return decoding.decode(decoding.OpenedImage("body", source))

    yield Case(
        "plain PNG read without PIL's open",
        "png.read_plain, png.decode",
        plain_path,
        pil_path,
        1,
        equal,
    )
