"""Hostile images against the real server: small uploads that decode to huge pixel counts,
and files whose structure makes a parser slow. Memory is the server process's peak RSS
(VmHWM); a stall is the worst /healthz latency while the attack runs (docs/reliability.md)."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

from PIL import Image

from tests.reliability.server import HealthProbe, Server, request, running
from tests.service import service_samples as samples

MIB = 2**20


def peak_rss(pid: int) -> int:
    """The process's peak resident set so far (VmHWM), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024


def sparse_png(width: int, height: int) -> bytes:
    """A black gray PNG of width x height with five white pixels: tiny file, many pixels."""
    image = Image.new("L", (width, height))
    for i in range(5):
        image.putpixel((i * width // 5, (i * height // 5) % height), 255)
    return samples.encode(image, optimize=True)


def digit_page_png(side: int) -> bytes:
    """A '7' drawn large on a side x side white page (a photo of a digit, at full size)."""
    return samples.encode(
        samples.draw_seven(side, (side // 4, side // 8, side // 2, side // 2), 0, 255)
    )


def post(server: Server, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    headers = {"content-type": content_type, "accept": "application/json"}
    status, _, reply = request(server.port, "POST", path, body, headers, timeout=120)
    return status, reply


def growth(server: Server, attack: object) -> int:
    """How far the server's peak RSS rose above its current RSS during `attack()`."""
    assert callable(attack)
    pid = server.process.pid
    status = Path(f"/proc/{pid}/status").read_text()
    before = int(status.split("VmRSS:")[1].split()[0]) * 1024
    attack()
    return peak_rss(pid) - max(before, 0)


def test_many_small_files_of_huge_images_are_refused_before_decoding(
    seed_repo: Path, tmp_path: Path
) -> None:
    """64 copies of a 16 KB 4096x4096 PNG: before, a 200 after 32 s at 6.7 GB peak RSS."""
    body, content_type = samples.multipart([sparse_png(4096, 4096)] * 64)
    assert len(body) < 5 * MIB
    with running(seed_repo, tmp_path) as server:
        post(server, "/v1/reconstruct", samples.digit_png(), "image/png")  # warm
        replies: list[tuple[int, bytes]] = []
        rise = growth(
            server, lambda: replies.append(post(server, "/v1/reconstruct", body, content_type))
        )
    status, reply = replies[0]
    assert status == 422, reply
    problem = json.loads(reply)
    assert problem["errors"][0]["type"] == "request_too_large" and problem["field"] == "files"
    assert rise < 64 * MIB, f"peak RSS rose by {rise / MIB:.0f} MiB"


def test_one_long_thin_image_stays_within_memory(seed_repo: Path, tmp_path: Path) -> None:
    """A 16 KB PNG of 16,777,216 x 1 pixels: before, +930 MB peak."""
    with running(seed_repo, tmp_path) as server:
        post(server, "/v1/reconstruct", samples.digit_png(), "image/png")
        replies: list[tuple[int, bytes]] = []
        thin = sparse_png(16_777_216, 1)
        rise = growth(
            server, lambda: replies.append(post(server, "/v1/reconstruct", thin, "image/png"))
        )
    assert replies[0][0] in (200, 422), replies[0]
    assert rise < 100 * MIB, f"peak RSS rose by {rise / MIB:.0f} MiB"


def test_the_largest_legitimate_batch_stays_within_memory(seed_repo: Path, tmp_path: Path) -> None:
    """Two 4096x4096 photos of a digit (VAE_MAX_REQUEST_PIXELS in all) are served, and the
    server holds one decoded page at a time."""
    page = digit_page_png(4096)
    body, content_type = samples.multipart([page, page])
    with running(seed_repo, tmp_path) as server:
        post(server, "/v1/reconstruct", samples.digit_png(), "image/png")
        replies: list[tuple[int, bytes]] = []
        rise = growth(
            server, lambda: replies.append(post(server, "/v1/reconstruct", body, content_type))
        )
    status, reply = replies[0]
    assert status == 200, reply
    inputs = json.loads(reply)["inputs"]
    assert inputs[0] == inputs[1] and sum(inputs[0]) > 30  # the digit, found in both
    assert rise < 160 * MIB, f"peak RSS rose by {rise / MIB:.0f} MiB"


def chunky_png() -> bytes:
    """A 28x28 digit PNG with ~436k empty private ancillary chunks before its image data."""
    digit = samples.digit_png()
    first = 8 + 25  # the signature, then IHDR
    empty = samples.png_chunk(b"zzZz", b"")
    return digit[:first] + empty * ((5 * MIB - len(digit)) // len(empty)) + digit[first:]


def markered_jpeg() -> bytes:
    """A small JPEG with 1.25M empty APP0 markers after its start-of-image marker."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(samples.photo_png())).convert("L").save(buffer, "JPEG")
    data = buffer.getvalue()
    return data[:2] + b"\xff\xe0\x00\x02" * 1_250_000 + data[2:]


def commented_gif() -> bytes:
    """A small GIF with ~1.7M empty comment extensions before its image."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(samples.photo_png())).convert("L").save(buffer, "GIF")
    data = buffer.getvalue()
    start = data.index(b"\x2c")  # the image descriptor (after header and colour table)
    return data[:start] + b"\x21\xfe\x00" * 1_700_000 + data[start:]


def test_files_that_are_slow_to_parse_are_refused_without_stalling(
    seed_repo: Path, tmp_path: Path
) -> None:
    """Before: one such PNG blocked /healthz for 2 s (Image.open on the event loop), four
    concurrent ones 1.5-3.8 s; the JPEG took 2.65 s to open, the GIF 1.1 s."""
    attacks = {
        "image/png": chunky_png(),
        "image/jpeg": markered_jpeg(),
        "image/gif": commented_gif(),
    }
    replies: list[tuple[int, bytes]] = []

    def attack(server: Server, content_type: str, body: bytes) -> None:
        replies.append(post(server, "/v1/reconstruct", body, content_type))

    with running(seed_repo, tmp_path) as server, HealthProbe(server.port) as probe:
        threads = [
            threading.Thread(target=attack, args=(server, content_type, body))
            for content_type, body in attacks.items()
            for _ in range(4 if content_type == "image/png" else 1)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert len(replies) == 6
    for status, reply in replies:
        assert status == 422, reply
        assert json.loads(reply)["errors"][0]["type"] == "too_many_parts"
    assert probe.worst < 0.5, f"/healthz took {probe.worst:.2f} s during the attack"
    assert not probe.failures
