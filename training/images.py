"""Image grids as PNG (PIL only; no plotting library needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from training.config import IMAGE_SHAPE


def grid(
    images: np.ndarray, columns: int | None = None, pad: int = 2, scale: int = 2
) -> Image.Image:
    """Tile [N, 784] or [N, 28, 28] intensities in [0, 1] into one grey image."""
    tiles = np.asarray(images, dtype=np.float32).reshape(-1, *IMAGE_SHAPE)
    n = len(tiles)
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = IMAGE_SHAPE
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 0.5, dtype=np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[top : top + h, left : left + w] = tile
    pixels = (np.clip(canvas, 0.0, 1.0) * 255).round().astype(np.uint8)
    image = Image.fromarray(pixels, mode="L")
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def save_grid(path: Path, images: np.ndarray, columns: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(images, columns).save(path, optimize=True)


def save_rows(path: Path, originals: np.ndarray, reconstructions: np.ndarray) -> None:
    """The notebook's visualize_row: originals on top, reconstructions beneath."""
    n = len(originals)
    save_grid(path, np.concatenate([originals.reshape(n, -1), reconstructions.reshape(n, -1)]), n)
