"""Hypothesis strategies for real image files: every format and pixel mode the service takes.

Schemathesis draws `format: binary` bodies of an image media type from these, so that
"positive" data is a decodable image (any size, mode, ink or none) instead of one fixed
1x1 sample, and the decoders and the preprocessing get fuzzed as well as the parsers.
"""

from __future__ import annotations

import io

import numpy as np
from hypothesis import strategies as st
from PIL import Image, ImageDraw

# Pixel modes each format can store (PIL writes them as they are, without conversion).
MODES = {
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"),
    "JPEG": ("L", "RGB", "CMYK"),
    "WEBP": ("RGB", "RGBA"),
    "BMP": ("1", "L", "P", "RGB"),
    "GIF": ("L", "P"),
}
FORMAT_OF = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/webp": "WEBP",
    "image/bmp": "BMP",
    "image/gif": "GIF",
}
sides = st.one_of(st.just(28), st.integers(min_value=1, max_value=96))
levels = st.integers(min_value=0, max_value=255)


@st.composite
def image_files(draw: st.DrawFn, fmt: str) -> bytes:
    """One image file in `fmt`: a stroke of some ink on some paper, maybe with noise."""
    width, height = draw(sides), draw(sides)
    gray = Image.new("L", (width, height), draw(levels))
    points = [(draw(st.integers(0, width)), draw(st.integers(0, height))) for _ in range(3)]
    ImageDraw.Draw(gray).line(points, fill=draw(levels), width=draw(st.integers(1, 8)))
    if draw(st.booleans()):
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        noise = rng.integers(-40, 41, size=(height, width))
        gray = Image.fromarray(
            np.clip(np.asarray(gray, dtype=np.int64) + noise, 0, 255).astype(np.uint8)
        )
    return _encode(gray, fmt, draw(st.sampled_from(MODES[fmt])))


def _encode(gray: Image.Image, fmt: str, mode: str) -> bytes:
    if mode == "I;16":
        image = Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257)
    elif mode in ("LA", "RGBA"):
        image = gray.convert(mode)
        image.putalpha(gray.point(lambda v: 255 - v))  # ink opaque, paper transparent
    else:
        image = gray.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()
