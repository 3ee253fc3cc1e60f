"""The MNIST loader and downloader, on tiny generated IDX files and a local HTTP server."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from tests.mnist_files import IMAGES_MAGIC, idx_bytes, write_mnist
from training.data import (
    KNOWN_CHECKSUMS,
    VALIDATION_SIZE,
    DataError,
    DataSource,
    binarize,
    download,
    load_split,
    missing_files,
    parse_idx,
    train_validation,
)

SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


def source(directory: Path, checksums: dict[str, str], **kw: object) -> DataSource:
    return DataSource(directory, checksums=checksums, expect_standard_counts=False, **kw)  # type: ignore[arg-type]


def test_loads_gz_and_splits_off_the_last_5000(mnist_dir: tuple[Path, dict[str, str]]) -> None:
    directory, checksums = mnist_dir
    train = load_split(source(directory, checksums, download=False), "train")
    assert train.images.shape == (5_200, 28, 28) and train.labels.shape == (5_200,)
    tr, val = train_validation(train)
    assert len(val) == VALIDATION_SIZE and len(tr) == 200
    np.testing.assert_array_equal(val.images, train.images[-VALIDATION_SIZE:])


def test_raw_files_load_like_gz(mnist_dir: tuple[Path, dict[str, str]]) -> None:
    directory, _ = mnist_dir
    for gz in directory.glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    train = load_split(source(directory, {}, download=False), "train")
    assert len(train) == 5_200


def test_binarize_thresholds_at_half() -> None:
    images = np.array([[[0, 127, 128, 255]]], dtype=np.uint8)
    assert binarize(images, 0.5).tolist() == [[0.0, 0.0, 1.0, 1.0]]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: b"\x00\x00\x08\x01" + raw[4:], "bad magic number"),
        (lambda raw: raw[:-100], "truncated or padded"),
        (lambda raw: raw[:10], "truncated IDX header"),
        (lambda raw: raw[:3], "too short"),
    ],
    ids=["bad-magic", "truncated-body", "truncated-header", "tiny"],
)
def test_corrupt_idx_is_refused_clearly(mutate: object, message: str) -> None:
    raw = idx_bytes(np.zeros((3, 28, 28), np.uint8), IMAGES_MAGIC)
    with pytest.raises(DataError, match=message):
        parse_idx(mutate(raw), "images", IMAGES_MAGIC)  # type: ignore[operator]


def test_wrong_count_is_refused(mnist_dir: tuple[Path, dict[str, str]]) -> None:
    directory, checksums = mnist_dir
    standard = DataSource(directory, checksums=checksums, download=False)  # expects 60,000
    with pytest.raises(DataError, match="5200 images, expected 60000"):
        load_split(standard, "train")


def test_label_count_must_match_images(tmp_path: Path) -> None:
    write_mnist(tmp_path, n=5_200)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(10, np.uint8), 0x801)))
    with pytest.raises(DataError, match="5200 images but 10 labels"):
        load_split(source(tmp_path, {}, download=False), "train")


def test_checksum_mismatch_names_the_file(mnist_dir: tuple[Path, dict[str, str]]) -> None:
    directory, checksums = mnist_dir
    wrong = {**checksums, "train-images-idx3-ubyte.gz": "sha256:" + "0" * 64}
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: checksum mismatch"):
        load_split(source(directory, wrong, download=False), "train")


def test_the_real_file_names_are_checked_by_default(tmp_path: Path) -> None:
    write_mnist(tmp_path)  # synthetic content under the standard names
    with pytest.raises(DataError, match="not the standard MNIST file"):
        load_split(DataSource(tmp_path, download=False), "train")
    assert set(KNOWN_CHECKSUMS) >= {"train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"}


def test_missing_test_split_is_reported(mnist_dir: tuple[Path, dict[str, str]]) -> None:
    directory, checksums = mnist_dir
    src = source(directory, checksums, download=False)
    assert missing_files(src, "test") == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    both = r"t10k-images-idx3-ubyte\.gz and t10k-labels-idx1-ubyte\.gz are not in"
    with pytest.raises(DataError, match=both):
        load_split(src, "test")


# --- downloads from a local server ----------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    drop_after: int | None = None  # bytes to send before dropping the connection

    def do_GET(self) -> None:
        body = self.files.get(self.path.rsplit("/", 1)[-1])
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.drop_after is None:
            self.wfile.write(body)
        else:
            self.wfile.write(body[: self.drop_after])
            self.wfile.flush()
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, type[_Handler], dict[str, str]]]:
    """A 127.0.0.1 HTTP server serving synthetic MNIST files; yields (url, handler, checksums)."""
    served = tmp_path / "served"
    checksums = write_mnist(served)
    handler = type(
        "Handler", (_Handler,), {"files": {p.name: p.read_bytes() for p in served.iterdir()}}
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/mnist/", handler, checksums
    finally:
        server.shutdown()
        server.server_close()


def test_download_fetches_missing_files_and_verifies_them(tmp_path: Path, mirror) -> None:  # type: ignore[no-untyped-def]
    url, _, checksums = mirror
    dest = tmp_path / "cache"
    train = load_split(source(dest, checksums, mirrors=[url], timeout_s=5), "train")
    assert len(train) == 5_200
    assert sorted(p.name for p in dest.iterdir()) == sorted(checksums)


def test_download_falls_through_to_the_next_mirror(tmp_path: Path, mirror) -> None:  # type: ignore[no-untyped-def]
    url, _, checksums = mirror
    dead = "http://127.0.0.1:9/"  # discard port: connection refused
    path = download(
        source(tmp_path / "cache", checksums, mirrors=[dead, url], timeout_s=5),
        "train-labels-idx1-ubyte.gz",
    )
    assert hashlib.sha256(path.read_bytes()).hexdigest() == checksums[path.name].split(":")[1]


def test_download_with_bad_checksum_leaves_nothing(tmp_path: Path, mirror) -> None:  # type: ignore[no-untyped-def]
    url, _, checksums = mirror
    wrong = dict.fromkeys(checksums, "sha256:" + "1" * 64)
    dest = tmp_path / "cache"
    with pytest.raises(DataError, match="checksum mismatch") as err:
        load_split(source(dest, wrong, mirrors=[url], timeout_s=5), "train")
    assert "Put the MNIST file" in str(err.value)
    assert list(dest.iterdir()) == []


def test_dropped_connection_leaves_no_partial_file(tmp_path: Path, mirror) -> None:  # type: ignore[no-untyped-def]
    url, handler, checksums = mirror
    handler.drop_after = 1000
    dest = tmp_path / "cache"
    with pytest.raises(DataError, match="connection closed after 1000 of"):
        download(source(dest, checksums, mirrors=[url], timeout_s=5), "train-images-idx3-ubyte.gz")
    assert list(dest.iterdir()) == []


def test_no_network_says_which_files_to_put_where(tmp_path: Path) -> None:
    src = source(tmp_path / "data", {}, mirrors=["http://127.0.0.1:9/"], timeout_s=2)
    with pytest.raises(DataError) as err:
        load_split(src, "train")
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path / "data") in message


@pytest.mark.skipif(
    not SHARED_MNIST.is_dir(), reason="the genuine MNIST files are not on this machine"
)
def test_genuine_mnist_verifies() -> None:
    train = load_split(DataSource(SHARED_MNIST, download=False), "train")
    assert train.images.shape == (60_000, 28, 28)
    assert np.bincount(train.labels, minlength=10).min() > 5_000
