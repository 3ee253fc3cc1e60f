"""Probabilities -> a PNG: one image, a grid for a batch, or a strip; optional integer scaling."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from service.images import png

Array = npt.NDArray[np.float32]
GAP = 2  # pixels between the cells of a grid
GAP_LEVEL = 96  # gray of the gaps, so that black digit backgrounds stay apart
MAX_SCALE = 16
MAX_OUTPUT_SIDE = 4096  # pixels; a larger grid is refused (scale too large for the batch)


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
    return png.encode(pixels)


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
