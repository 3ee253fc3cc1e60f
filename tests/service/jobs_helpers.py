"""Model jobs for tests, without HTTP: real runtimes, and inputs given as exact images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.images.decoding import OpenedImage, open_image
from service.images.preprocess import ImageOptions
from service.inference.jobs import Job, Latent, Result, run_jobs
from service.model import loader
from service.model.latent import Array
from service.model.manifest import read_manifest
from service.model.runtime import ModelRuntime
from tests.service.service_samples import gray_array_png

MNIST = ImageOptions("mnist", True, 0.5, (28, 28))
AS_IS = ImageOptions("none", True, 0.5, (28, 28))  # a 0/255 image is its own binary x
FIELDS = ("x", "mu", "logvar", "z", "probs")


def load_runtime(version_dir: Path) -> ModelRuntime:
    return loader.load_runtime(
        version_dir, read_manifest(version_dir), threads=1, source="repository"
    )


def binary_x(count: int, seed: int) -> Array:
    """[count, 784] of 0 and 1, seeded."""
    return (np.random.default_rng(seed).random((count, 784)) > 0.7).astype(np.float32)


class Images:
    """An ImageSource of image files, opened when the job reads them (as uploads are)."""

    def __init__(self, files: Sequence[bytes]) -> None:
        self.files = files

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def pixels(self) -> int:
        return sum(image.pixels for image in self.images())

    def images(self) -> list[OpenedImage]:
        return [open_image(f, f"files[{i}]", 4096 * 4096) for i, f in enumerate(self.files)]


def job(runtime: ModelRuntime, x: Array, z: Latent, decode: bool = True) -> Job[Result]:
    """A job whose model input is exactly `x` [B, 784] of 0 and 1 (as 28x28 PNGs taken as
    they are), answering its Result."""
    pngs = [gray_array_png(row.reshape(28, 28) * 255) for row in x]
    return Job(runtime, Images(pngs), AS_IS, z=z, decode=decode, finish=lambda result: result)


def image_job(runtime: ModelRuntime, files: list[bytes], decode: bool = True) -> Job[Result]:
    """A job of image files preprocessed as MNIST, decoding the mean (or only encoding)."""
    z: Latent = "mean" if decode else None
    return Job(runtime, Images(files), MNIST, z=z, decode=decode, finish=lambda result: result)


def alone(one: Job[Result]) -> Result:
    (outcome,) = run_jobs([one])
    assert isinstance(outcome, Result), outcome
    return outcome


def assert_same(got: Result, want: Result) -> None:
    """Every array of two results equal bit for bit (or both absent)."""
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if b is not None:
            assert a.tobytes() == b.tobytes(), name
