"""Tiny synthetic MNIST-format IDX files for tests: digit-like blobs, never the real set."""

from __future__ import annotations

import functools
import gzip
import hashlib
from pathlib import Path

import numpy as np

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


@functools.cache
def synthetic_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images [n, 28, 28] uint8: one of ten fixed stroke templates, jittered; labels = template.

    Cached: callers must not modify the arrays.
    """
    rng = np.random.default_rng(seed)
    templates = np.zeros((10, 28, 28), dtype=np.float32)
    for t in range(10):
        for _ in range(3):  # three thick strokes per template
            r0, c0, r1, c1 = rng.integers(6, 22, size=4)
            for s in np.linspace(0.0, 1.0, 40):
                r, c = round(r0 + s * (r1 - r0)), round(c0 + s * (c1 - c0))
                templates[t, r - 1 : r + 2, c - 1 : c + 2] = 1.0
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    shifts = rng.integers(-2, 3, size=(n, 2))
    # Jitter by up to 2 pixels: pad once, then take shifted 28x28 windows.
    padded = np.pad(templates, ((0, 0), (2, 2), (2, 2)))
    rows = (2 - shifts[:, 0])[:, None] + np.arange(28)  # [n, 28]
    cols = (2 - shifts[:, 1])[:, None] + np.arange(28)
    images = padded[labels[:, None, None], rows[:, :, None], cols[:, None, :]]
    noise = rng.uniform(0.0, 0.3, size=images.shape)
    pixels = np.clip(images * 0.9 + noise * images + 0.05 * noise, 0.0, 1.0) * 255
    return pixels.astype(np.uint8), labels


def write_mnist(
    directory: Path, n: int = 5_200, seed: int = 0, prefix: str = "train"
) -> dict[str, str]:
    """Write gzipped images and labels; return their checksums as 'sha256:<hex>'."""
    directory.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for name, blob in _gz_files(n, seed, prefix).items():
        (directory / name).write_bytes(blob)
        checksums[name] = "sha256:" + hashlib.sha256(blob).hexdigest()
    return checksums


@functools.cache
def _gz_files(n: int, seed: int, prefix: str) -> dict[str, bytes]:
    images, labels = synthetic_digits(n, seed)
    return {
        f"{prefix}-images-idx3-ubyte.gz": gzip.compress(
            idx_bytes(images, IMAGES_MAGIC), 1, mtime=0
        ),
        f"{prefix}-labels-idx1-ubyte.gz": gzip.compress(
            idx_bytes(labels, LABELS_MAGIC), 1, mtime=0
        ),
    }
