"""Probabilities -> PNG: one image, a grid for a batch, or a strip; optional integer scaling."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

from service.latent import Array

GAP = 2  # pixels between the cells of a grid
GAP_LEVEL = 96  # gray of the gaps, so that black digit backgrounds stay apart
MAX_SCALE = 16
MAX_OUTPUT_SIDE = 4096  # pixels; a larger grid is refused (scale too large for the batch)
PNG_COMPRESS_LEVEL = 1  # level 1 is within 10% of level 6's size for these images, 1.5x faster
# Pixel data up to this size is stored, not compressed: the response fits one Ethernet packet
# either way (a 28x28 image is 812 bytes stored, ~300 compressed), and storing costs 2 us
# where level 1 costs 10 us (docs/benchmarks.md).
PNG_STORE_MAX_BYTES = 1200
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def grid_columns(count: int) -> int:
    """A near-square grid: ceil(sqrt(count)) columns."""
    return max(1, math.ceil(math.sqrt(count)))


def output_side(count: int, columns: int, shape: tuple[int, int], scale: int) -> int:
    """The longer side, in pixels, of the grid `render` would make."""
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    height = (rows * shape[0] + (rows - 1) * GAP) * scale
    width = (columns * shape[1] + (columns - 1) * GAP) * scale
    return max(height, width)


def largest_scale(count: int, columns: int, shape: tuple[int, int]) -> int:
    """The largest scale (<= MAX_SCALE) that keeps the grid within MAX_OUTPUT_SIDE."""
    return max(1, min(MAX_SCALE, MAX_OUTPUT_SIDE // output_side(count, columns, shape, 1)))


def render(probs: Array, shape: tuple[int, int], columns: int, scale: int) -> bytes:
    """[B, D] probabilities in [0, 1] -> a PNG of the B images in a grid, left to right."""
    cells = np.rint(np.clip(probs, 0.0, 1.0) * 255.0).astype(np.uint8).reshape(-1, *shape)
    pixels = cells[0] if len(cells) == 1 else _tile(cells, columns)
    if scale > 1:
        pixels = np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)
    return encode_png(pixels)


def encode_png(pixels: np.ndarray) -> bytes:
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


def _tile(cells: np.ndarray, columns: int) -> np.ndarray:
    """[B, H, W] uint8 -> one [rows*H + gaps, columns*W + gaps] uint8 image."""
    count, h, w = cells.shape
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    out = np.full((rows * (h + GAP) - GAP, columns * (w + GAP) - GAP), GAP_LEVEL, np.uint8)
    for i, cell in enumerate(cells):
        top, left = (i // columns) * (h + GAP), (i % columns) * (w + GAP)
        out[top : top + h, left : left + w] = cell
    return out
