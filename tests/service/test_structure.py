"""Structural limits (service.structure): ordinary files pass, files of too many parts are
refused at the limit, not before."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from service.images import structure
from service.images.errors import ImageError
from tests.service import service_samples as samples


def photo(fmt: str, **params: object) -> bytes:
    image = Image.open(io.BytesIO(samples.photo_png())).convert("RGB")
    return samples.encode(image, fmt, **params)


def split_idat(png: bytes, pieces: int) -> bytes:
    """The same PNG with its image data cut into `pieces` IDAT chunks."""
    start = png.index(b"IDAT") - 4
    length = int.from_bytes(png[start : start + 4], "big")
    data = png[start + 8 : start + 8 + length]
    step = -(-len(data) // pieces)
    chunks = b"".join(
        samples.png_chunk(b"IDAT", data[i : i + step]) for i in range(0, len(data), step)
    )
    return png[:start] + chunks + png[start + 12 + length :]


@pytest.mark.parametrize(
    "data",
    [
        photo(
            "JPEG",
            progressive=True,
            quality=90,
            exif=Image.Exif().tobytes(),
            icc_profile=b"\0" * 9000,
        ),
        photo("GIF"),
        photo("PNG"),
        split_idat(samples.photo_png(), 600),
        photo("WEBP"),
        photo("BMP"),
    ],
    ids=["progressive-jpeg", "gif", "png", "png-600-idat", "webp", "bmp"],
)
def test_ordinary_files_pass(data: bytes) -> None:
    structure.check_structure(data, "body")
    assert Image.open(io.BytesIO(data)).size == (200, 200)


def padded_jpeg(markers: int) -> bytes:
    """A JPEG with `markers` empty APP0 segments: its count before the scan grows by that."""
    data = photo("JPEG")
    return data[:2] + b"\xff\xe0\x00\x02" * markers + data[2:]


def commented_gif(blocks: int) -> bytes:
    data = photo("GIF")
    start = data.index(b"\x2c")
    return data[:start] + b"\x21\xfe\x00" * blocks + data[start:]


def chunky_png(chunks: int) -> bytes:
    data = samples.photo_png()
    return data[:33] + samples.png_chunk(b"zzZz", b"") * chunks + data[33:]


@pytest.mark.parametrize(
    ("make", "limit"),
    [
        (padded_jpeg, structure.MAX_JPEG_SEGMENTS),
        (commented_gif, structure.MAX_GIF_BLOCKS),
        (chunky_png, structure.MAX_PNG_CHUNKS),
    ],
    ids=["jpeg", "gif", "png"],
)
def test_files_past_the_limit_are_refused(make: object, limit: int) -> None:
    assert callable(make)
    parts = structure.check_structure
    parts(make(limit // 2), "files[0]")  # well within: accepted
    with pytest.raises(ImageError) as refused:
        parts(make(limit), "files[0]")
    assert refused.value.field == "files[0]" and refused.value.code == "too_many_parts"
