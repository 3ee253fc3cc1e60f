"""MNIST from IDX files: verify, download when missing, split, and batch.

The standard files are checked against their published checksums; a download is streamed
to a temporary name, verified, then renamed, so a broken transfer never leaves a file
that looks complete.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.config import IMAGE_SHAPE

log = logging.getLogger(__name__)

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
VALIDATION_SIZE = 5_000  # the last 5,000 training images, as the seed notebook's loader
DEFAULT_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# Published checksums of the standard gz files ("algorithm:hex"): sha256 where we have
# verified it on the genuine files, md5 as torchvision lists them otherwise.
KNOWN_CHECKSUMS: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "sha256:"
    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "sha256:"
    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
}
SPLIT_FILES: dict[str, tuple[str, str, int]] = {
    # split: (images file, labels file, expected count)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}


class DataError(RuntimeError):
    """The data is missing, corrupt or not MNIST; the message says what to do."""


@dataclass(frozen=True)
class DataSource:
    """Where the data lives and how it is checked."""

    directory: Path
    mirrors: Sequence[str] = DEFAULT_MIRRORS
    checksums: Mapping[str, str] | None = None  # None: KNOWN_CHECKSUMS; {}: skip checks
    download: bool = True
    expect_standard_counts: bool = True  # 60,000 / 10,000 images; off for custom data
    timeout_s: float = 30.0

    @property
    def known(self) -> Mapping[str, str]:
        return KNOWN_CHECKSUMS if self.checksums is None else self.checksums


@dataclass(frozen=True)
class Split:
    """Images as uint8 [N, 28, 28] and labels as uint8 [N]."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --- checksums ---------------------------------------------------------------------------


def _hasher(expected: str) -> tuple[hashlib._Hash, str]:
    algorithm, _, hexdigest = expected.partition(":")
    if algorithm not in ("sha256", "md5") or not hexdigest:
        raise DataError(f"checksum {expected!r} is not of the form 'sha256:<hex>' or 'md5:<hex>'")
    return hashlib.new(algorithm), hexdigest.lower()


def verify_checksum(path: Path, expected: str) -> None:
    digest, want = _hasher(expected)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != want:
        raise DataError(
            f"{path}: checksum mismatch ({digest.name} {digest.hexdigest()}, expected {want}); "
            "the file is corrupt or not the standard MNIST file: delete it and fetch it again"
        )


# --- parsing -----------------------------------------------------------------------------


def parse_idx(raw: bytes, name: str, magic: int) -> np.ndarray:
    """An IDX byte string -> array of its declared shape (uint8 data only)."""
    if len(raw) < 8:
        raise DataError(f"{name}: {len(raw)} bytes is too short for an IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{name}: bad magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{name}: {len(raw)} bytes but the header declares shape {shape} "
            f"({expected} bytes): the file is truncated or padded"
        )
    # A writable copy: torch refuses to share read-only buffers.
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, magic: int, known: Mapping[str, str]) -> np.ndarray:
    """Read a raw or gzipped IDX file, checking its checksum when one is known."""
    if path.name in known:
        verify_checksum(path, known[path.name])
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot decompress ({exc}); delete it and fetch it again") from exc
    return parse_idx(raw, str(path), magic)


# --- download ----------------------------------------------------------------------------


def _fetch(url: str, dest: Path, expected: str | None, timeout_s: float) -> None:
    """Stream `url` to a temporary file beside `dest`, verify, then rename into place."""
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
    digest, want = _hasher(expected) if expected else (hashlib.sha256(), None)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, tmp.open("wb") as out:
            declared = response.headers.get("Content-Length")
            received = 0
            for chunk in iter(lambda: response.read(1 << 16), b""):
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
        if declared is not None and received != int(declared):
            raise DataError(f"connection closed after {received} of {declared} bytes")
        if want is not None and digest.hexdigest() != want:
            raise DataError(f"checksum mismatch ({digest.hexdigest()}, expected {want})")
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def download(source: DataSource, filename: str) -> Path:
    """Fetch `filename` from the first mirror that serves it intact."""
    source.directory.mkdir(parents=True, exist_ok=True)
    dest = source.directory / filename
    errors: list[str] = []
    for mirror in source.mirrors:
        url = mirror.rstrip("/") + "/" + filename
        try:
            _fetch(url, dest, source.known.get(filename), source.timeout_s)
        except (OSError, urllib.error.URLError, DataError, ValueError) as exc:
            errors.append(f"{url}: {exc}")
            log.warning("download failed: %s: %s", url, exc)
            continue
        log.info("downloaded %s from %s", filename, url)
        return dest
    raise DataError(
        f"could not download {filename} from any mirror:\n  "
        + "\n  ".join(errors or ["no mirrors configured"])
        + f"\nPut the MNIST file {filename} into {source.directory} by hand "
        "(or the uncompressed file without .gz) and run again."
    )


# --- splits ------------------------------------------------------------------------------


def missing_files(source: DataSource, split: str) -> list[str]:
    return [
        f"{stem}.gz" for stem in SPLIT_FILES[split][:2] if _find(source.directory, stem) is None
    ]


def load_split(source: DataSource, split: str) -> Split:
    """The whole 'train' (60,000) or 'test' (10,000) set, downloading missing files."""
    images_stem, labels_stem, count = SPLIT_FILES[split]
    missing = missing_files(source, split)
    if missing and not source.download:
        raise DataError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in "
            f"{source.directory}; put the MNIST files there or allow downloading"
        )
    for name in missing:
        download(source, name)
    images_path = _find(source.directory, images_stem)
    labels_path = _find(source.directory, labels_stem)
    assert images_path is not None and labels_path is not None
    images = read_idx(images_path, IMAGES_MAGIC, source.known)
    labels = read_idx(labels_path, LABELS_MAGIC, source.known)
    _check_shapes(images, labels, split, count if source.expect_standard_counts else None)
    return Split(images=images, labels=labels)


def _check_shapes(images: np.ndarray, labels: np.ndarray, split: str, count: int | None) -> None:
    if images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{split} images are {images.shape[1:]}, expected {IMAGE_SHAPE}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    if count is not None and images.shape[0] != count:
        raise DataError(f"{split}: {images.shape[0]} images, expected {count}")
    if labels.size and int(labels.max()) > 9:
        raise DataError(f"{split}: label {int(labels.max())} is not a digit 0-9")


def train_validation(train: Split, validation_size: int = VALIDATION_SIZE) -> tuple[Split, Split]:
    """Hold out the last `validation_size` training images."""
    if not 0 < validation_size < len(train):
        raise DataError(f"validation size {validation_size} does not fit {len(train)} images")
    cut = len(train) - validation_size
    return (
        Split(train.images[:cut], train.labels[:cut]),
        Split(train.images[cut:], train.labels[cut:]),
    )


def binarize(images: np.ndarray, threshold: float) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 784] of {0, 1}: pixel / 255 > threshold."""
    flat = torch.from_numpy(np.ascontiguousarray(images)).reshape(len(images), -1)
    return (flat.float() / 255.0 > threshold).float()


class BatchStream:
    """Shuffled minibatches of an in-memory tensor, one fresh permutation per epoch.

    Its whole state (generator, permutation, position) round-trips through
    `state_dict()`, so a resumed run sees exactly the batches it would have seen.
    """

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int) -> None:
        if batch_size > len(data):
            raise DataError(f"batch size {batch_size} exceeds the {len(data)} training images")
        self.data = data
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(data), generator=self.generator)
        self.position = 0

    def next(self) -> torch.Tensor:
        if self.position + self.batch_size > len(self.order):
            self.order = torch.randperm(len(self.data), generator=self.generator)
            self.position = 0
        idx = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return self.data.index_select(0, idx)

    def state_dict(self) -> dict[str, object]:
        return {
            "generator": self.generator.get_state(),
            "order": self.order.clone(),
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.generator.set_state(state["generator"])  # type: ignore[arg-type]
        self.order = state["order"]  # type: ignore[assignment]
        self.position = int(state["position"])  # type: ignore[call-overload]
