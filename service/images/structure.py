"""Structural limits on image files, checked before PIL reads them.

PIL parses the parts of PNG, JPEG and GIF files around the pixel data (chunks, markers,
extension blocks) in Python, one at a time, so its cost grows with their count, not with the
pixels: a 5 MiB PNG of 436k empty chunks took 2 s to open, a JPEG of 1.3M empty APP markers
2.65 s, a GIF of comment extensions 1.1 s (docs/reliability.md). Ordinary files have a few
dozen; these walks count them, cheaply, and refuse a file past a limit far above that. They
judge only the count: a file they cannot follow is left to PIL, which says what is wrong.
"""

from __future__ import annotations

from service.images.errors import ImageError

MAX_PNG_CHUNKS = 4096  # a 5 MiB image in 8 KiB IDAT chunks has 640
MAX_JPEG_SEGMENTS = 512  # before the first scan; an ordinary JPEG has 10-30
MAX_GIF_BLOCKS = 65536  # extension and image blocks and their sub-blocks (up to 255 bytes each)


def check_structure(data: bytes, field: str) -> None:
    """Raise a 422 when the file has more parts than its format's limit allows."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        parts, limit, kind = _png_chunks(data), MAX_PNG_CHUNKS, "PNG chunks"
    elif data.startswith(b"\xff\xd8"):
        parts, limit, kind = _jpeg_segments(data), MAX_JPEG_SEGMENTS, "JPEG segments"
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        parts, limit, kind = _gif_blocks(data), MAX_GIF_BLOCKS, "GIF blocks"
    else:
        return
    if parts > limit:
        raise ImageError(
            field, "too_many_parts", f"more than {limit} {kind}; expected an ordinary image file"
        )


def _png_chunks(data: bytes) -> int:
    """Chunks counted, up to one past the limit."""
    pos, count = 8, 0
    while pos + 8 <= len(data) and count <= MAX_PNG_CHUNKS:
        count += 1
        if data[pos + 4 : pos + 8] == b"IEND":
            break
        pos += 12 + int.from_bytes(data[pos : pos + 4], "big")
    return count


def _jpeg_segments(data: bytes) -> int:
    """Markers (fill bytes included) up to the first scan, counted up to one past the limit."""
    pos, count = 2, 0
    while pos + 4 <= len(data) and count <= MAX_JPEG_SEGMENTS and data[pos] == 0xFF:
        count += 1
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data, read in C
            break
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:
            pos += 1 if marker == 0xFF else 2  # fill byte, or a marker without a length
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return count


def _gif_blocks(data: bytes) -> int:
    """Blocks and sub-blocks after the header, counted up to one past the limit."""
    pos, count = 13 + _colour_table(data[10] if len(data) > 10 else 0), 0
    while pos < len(data) and count <= MAX_GIF_BLOCKS and data[pos] != 0x3B:  # trailer
        count += 1
        if data[pos] == 0x21:  # extension: introducer, label, sub-blocks
            pos += 2
        elif data[pos] == 0x2C and pos + 10 < len(data):  # image: descriptor, table, code size
            pos += 11 + _colour_table(data[pos + 9])
        else:
            break
        while pos < len(data) and data[pos] and count <= MAX_GIF_BLOCKS:
            count += 1
            pos += 1 + data[pos]
        pos += 1
    return count


def _colour_table(flags: int) -> int:
    """Bytes of the colour table a GIF's flags byte announces."""
    return 3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0
