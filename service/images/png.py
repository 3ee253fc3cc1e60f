"""PNG in and out: plain PNGs read without PIL's file machinery, and gray PNGs written.

Most images sent here are small 8-bit PNGs: a 28x28 digit is ~300 bytes. For one of those,
PIL's Image.open and load spend ~40 us in Python around ~3 us of inflating (docs/
benchmarks.md), and Image.open runs on the event loop. A plain PNG (8 bits per sample, gray,
gray + alpha, RGB or RGBA, not interlaced, and no chunks but the image's and pixel-neutral
ancillary ones) is read here with struct and decoded by PIL's own PNG decoder in one call:
the same pixels for a fraction of the work. Any other image is left to PIL (`read_plain`
returns None), and so is a plain one with a defect PIL would report (`decode`).

PNG layout (ISO/IEC 15948): the signature, then chunks of length, type, data, CRC-32 of type
and data; IHDR first, the image data in consecutive IDAT chunks, IEND last.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COMPRESS_LEVEL = 1  # level 1 is within 10% of level 6's size for these images, 1.5x faster
# Pixel data up to this size is stored, not compressed: the response fits one Ethernet packet
# either way (a 28x28 image is 812 bytes stored, ~300 compressed), and storing costs 2 us
# where level 1 costs 10 us (docs/benchmarks.md).
PNG_STORE_MAX_BYTES = 1200
# colour type at 8 bits per sample -> PIL's mode, which is also the raw mode it decodes
MODES = {0: "L", 2: "RGB", 4: "LA", 6: "RGBA"}
# Ancillary chunks that do not change decoded pixels (PIL keeps some of them in .info, which
# nothing here reads). tRNS (transparency) and the APNG chunks are not among them.
NEUTRAL_CHUNKS = frozenset(
    {b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs", b"tEXt", b"zTXt", b"iTXt", b"tIME"}
)
MAX_CHUNKS = 64  # a file of more chunks than this goes to PIL: the walk runs on the event loop
_LENGTH_TYPE = struct.Struct(">I4s")
_IHDR = struct.Struct(">IIBBBBB")
_CRC = struct.Struct(">I")
_FIRST_CHUNK = len(PNG_SIGNATURE) + 12 + _IHDR.size  # where the chunk after IHDR starts


@dataclass(frozen=True)
class PlainPng:
    """A plain PNG's header and chunk layout; nothing past the header is checked yet."""

    width: int
    height: int
    mode: str  # PIL's: L, RGB, LA or RGBA
    data: bytes  # the whole file
    chunks: list[tuple[int, int]]  # each chunk's type and data: data[start:stop]
    idat: tuple[int, int]  # the IDAT run: chunks[first:stop]


def read_plain(data: bytes) -> PlainPng | None:
    """The PNG's header and layout if it is plain; None for anything else. Cheap: it reads
    the chunks' headers, not their data."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < _FIRST_CHUNK:
        return None
    length, kind = _LENGTH_TYPE.unpack_from(data, len(PNG_SIGNATURE))
    if kind != b"IHDR" or length != _IHDR.size:
        return None
    fields = _IHDR.unpack_from(data, len(PNG_SIGNATURE) + 8)
    width, height, depth, colour, compression, filtering, interlace = fields
    mode = MODES.get(colour)
    if mode is None or depth != 8 or compression or filtering or interlace:
        return None
    limit = Image.MAX_IMAGE_PIXELS  # beyond it (None: no limit), PIL's checks and errors apply
    if width * height == 0 or (limit is not None and width * height > limit):
        return None
    chunks = [(len(PNG_SIGNATURE) + 4, _FIRST_CHUNK - 4)]
    first = stop = 0  # the IDAT run
    pos, end = _FIRST_CHUNK, len(data)
    while pos + 12 <= end and len(chunks) < MAX_CHUNKS:
        length, kind = _LENGTH_TYPE.unpack_from(data, pos)
        if pos + 12 + length > end:
            return None  # cut short
        if kind == b"IDAT":
            if stop and stop != len(chunks):
                return None  # a second run of IDAT
            first, stop = first or len(chunks), len(chunks) + 1
        elif kind == b"IEND":
            chunks.append((pos + 4, pos + 8 + length))
            return PlainPng(width, height, mode, data, chunks, (first, stop)) if stop else None
        elif kind not in NEUTRAL_CHUNKS:
            return None
        chunks.append((pos + 4, pos + 8 + length))
        pos += 12 + length
    return None


def decode(png: PlainPng) -> Image.Image:
    """The decoded image. A bad CRC or a bad image stream gives PIL's own (lazy) image of
    the file instead, whose load() raises PIL's error for it, or decodes what PIL accepts."""
    view = memoryview(png.data)
    for start, stop in png.chunks:
        (crc,) = _CRC.unpack_from(view, stop)
        if zlib.crc32(view[start:stop]) != crc:
            return _pil(png)
    first, stop = png.idat
    stream = b"".join(view[start + 4 : end] for start, end in png.chunks[first:stop])
    try:
        return Image.frombytes(png.mode, (png.width, png.height), stream, "zip", png.mode)
    except Exception:  # a bad zlib stream, too little data: PIL's reading says what is wrong
        return _pil(png)


def _pil(png: PlainPng) -> Image.Image:
    return Image.open(io.BytesIO(png.data), formats=("PNG",))


def encode(pixels: np.ndarray) -> bytes:
    """[H, W] uint8 -> an 8-bit grayscale PNG, no filtering, zlib at PNG_COMPRESS_LEVEL (or
    stored, level 0, when the pixel data is at most PNG_STORE_MAX_BYTES).

    Written directly (signature, IHDR, one IDAT, IEND; PNG spec, ISO/IEC 15948): for a 28x28
    image PIL's encoder spends ~40 us in Python plumbing around a ~10 us zlib call.
    """
    h, w = pixels.shape
    rows = np.zeros((h, w + 1), np.uint8)  # each row starts with its filter type, 0 = None
    rows[:, 1:] = pixels
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    raw = rows.tobytes()
    data = zlib.compress(raw, 0 if len(raw) <= PNG_STORE_MAX_BYTES else PNG_COMPRESS_LEVEL)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    """length, type, data, CRC-32 of type + data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
