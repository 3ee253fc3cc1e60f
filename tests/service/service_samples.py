"""Images and bodies for the service tests, good and bad, all made here (no files, no network)."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image, ImageDraw

PNG = "image/png"


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def draw_seven(size: int, box: tuple[int, int, int, int], ink: int, paper: int) -> Image.Image:
    """A '7' drawn with strokes in `box` (left, top, right, bottom) on a size x size page."""
    image = Image.new("L", (size, size), paper)
    left, top, right, bottom = box
    width = max(1, (right - left) // 6)
    pen = ImageDraw.Draw(image)
    pen.line([(left, top), (right, top)], fill=ink, width=width)
    pen.line([(right, top), (left + (right - left) // 3, bottom)], fill=ink, width=width)
    return image


def digit_png() -> bytes:
    """A clean MNIST-like 28x28 '7', made as MNIST's digits were: white ink on black, drawn
    large, reduced with anti-aliasing to 20 pixels tall, centred by its centre of mass."""
    big = draw_seven(280, (74, 40, 206, 240), ink=255, paper=0)
    small = np.asarray(big.resize((28, 28), Image.Resampling.LANCZOS), dtype=np.float64)
    ys, xs = np.indices(small.shape)
    shift = [round(13.5 - float((small * c).sum() / small.sum())) for c in (ys, xs)]
    return gray_array_png(np.roll(small, shift, axis=(0, 1)))


def naive_photo_png() -> bytes:
    """The photo squashed to 28x28 and inverted, without cropping or centring: a control."""
    small = Image.open(io.BytesIO(photo_png())).resize((28, 28), Image.Resampling.LANCZOS)
    return encode(Image.eval(small, lambda v: 255 - v))


def photo_png() -> bytes:
    """The same '7' drawn black-on-white at 200x200, off-centre, with a stroke to match."""
    return encode(draw_seven(200, (100, 20, 180, 140), ink=0, paper=255))


def gray_array_png(values: np.ndarray) -> bytes:
    return encode(Image.fromarray(values.astype(np.uint8)))


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds one tiny IDAT: a decompression bomb's
    header without the bomb (the size check must fire before any decoding)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def real_bomb_png() -> bytes:
    """A 6000x6000 black PNG (36 Mpx) that compresses to ~35 kB."""
    return encode(Image.new("L", (6000, 6000), 0), compress_level=9)


def bad_crc_png() -> bytes:
    data = bytearray(digit_png())
    data[33 + 8 + 4] ^= 0xFF  # first byte of the IDAT payload: the CRC no longer matches
    return bytes(data)


def truncated_png() -> bytes:
    data = photo_png()
    return data[: len(data) // 2]


def animated_gif() -> bytes:
    frames = [draw_seven(28, (8, 5, 20, 23), ink=255, paper=0), Image.new("L", (28, 28), 128)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def sixteen_bit_png() -> bytes:
    """The clean '7' as a 16-bit grayscale PNG (ink 65535 on 0)."""
    eight = np.asarray(Image.open(io.BytesIO(digit_png())), dtype=np.uint16)
    return encode(Image.fromarray(eight * 257))


def cmyk_jpeg() -> bytes:
    """The photo as a CMYK JPEG (black ink on white paper)."""
    rgb = draw_seven(200, (100, 20, 180, 140), ink=0, paper=255).convert("RGB")
    return encode(rgb.convert("CMYK"), "JPEG", quality=95)


def palette_png_with_alpha() -> bytes:
    """A palette PNG: transparent background, opaque black strokes (like a canvas drawing)."""
    strokes = draw_seven(200, (60, 30, 150, 170), ink=0, paper=255)
    image = Image.new("P", (200, 200), 0)
    image.putpalette([255, 255, 255, 0, 0, 0])
    image.paste(1, mask=Image.eval(strokes, lambda v: 255 - v))
    return encode(image, transparency=0)


def rgba_canvas_png(ink: tuple[int, int, int]) -> bytes:
    """A transparent canvas with opaque strokes of colour `ink`, as a browser exports it."""
    image = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    pen = ImageDraw.Draw(image)
    pen.line([(80, 60), (200, 60), (120, 230)], fill=(*ink, 255), width=18)
    return encode(image)


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("digit.png", digit_png())
    return buffer.getvalue()


def multipart(
    files: list[bytes], boundary: str = "testboundary", field: str = "files"
) -> tuple[bytes, str]:
    """A multipart/form-data body with one part per file, and its Content-Type."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(files)
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def decode_png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image)
