"""Settings, content negotiation, the inline/offload decision and PNG grids: small pure parts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from service.http.responses import negotiate
from service.images import grid as imaging
from service.images import png
from service.inference.executor import INLINE_MAX_PIXELS, INLINE_MAX_ROWS, Work, fits_event_loop
from service.settings import EMBEDDED_MODEL_DIR, Settings
from tests.service import service_samples as samples


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("VAE_"):
            monkeypatch.delenv(name)
    s = Settings()
    assert (s.host, s.port, s.model_repository, s.poll_interval_s) == ("127.0.0.1", 8000, None, 2.0)
    assert (s.max_body_bytes, s.max_image_pixels) == (5 * 2**20, 4096 * 4096)
    assert (s.max_batch, s.max_sample_n, s.max_score_k, s.max_interpolate_steps) == (
        64,
        256,
        1000,
        64,
    )
    assert (s.max_in_flight, s.ort_intra_op_threads, s.graceful_shutdown_s) == (64, 1, 10)
    assert s.embedded_model_dir == EMBEDDED_MODEL_DIR and s.fallback_to_embedded


def test_environment_is_read_with_the_vae_prefix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VAE_PORT", "9001")
    monkeypatch.setenv("VAE_MODEL_REPOSITORY", str(tmp_path))
    monkeypatch.setenv("VAE_LOG_LEVEL", "DEBUG")
    s = Settings()
    assert (s.port, s.model_repository, s.log_level) == (9001, tmp_path, "debug")


@pytest.mark.parametrize(
    ("name", "value"),
    [("port", 0), ("port", 70000), ("max_batch", 0), ("poll_interval_s", 0), ("max_body_bytes", 10),
     ("ort_intra_op_threads", 0), ("log_level", "loud"), ("max_interpolate_steps", 1)],
)  # fmt: skip
def test_bad_settings_fail_naming_the_field(name: str, value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**{name: value})
    assert caught.value.errors()[0]["loc"] == (name,)


def test_a_file_is_not_a_repository(tmp_path: Path) -> None:
    file = tmp_path / "repo.txt"
    file.write_text("")
    with pytest.raises(ValidationError, match="model_repository must be a directory"):
        Settings(model_repository=file)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(max_batches=3)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("accept", "expected"),
    [(None, "png"), ("*/*", "png"), ("image/png", "png"), ("application/json", "json"),
     ("application/json, image/png", "png"), ("image/png;q=0.5, application/json", "json"),
     ("text/html,application/xhtml+xml,*/*;q=0.8", "png"), ("application/*", "json"),
     ("application/json;q=0", "png"), ("application/json;q=abc", "png")],
)  # fmt: skip
def test_negotiation(accept: str | None, expected: str) -> None:
    assert negotiate(accept) == expected


def test_inline_only_for_small_bounded_work() -> None:
    assert fits_event_loop(Work(28 * 28, 2))
    assert fits_event_loop(Work(INLINE_MAX_PIXELS, INLINE_MAX_ROWS))
    assert not fits_event_loop(Work(INLINE_MAX_PIXELS + 1, 2))  # a large image to decode
    assert not fits_event_loop(Work(0, 256))  # n=256 samples
    assert not fits_event_loop(Work(None, 2))  # not known until read: multipart, a JPEG
    assert not fits_event_loop(Work(28 * 28, None))


def test_grid_layout_and_scale_limit() -> None:
    probs = np.linspace(0, 1, 7 * 784, dtype=np.float32).reshape(7, 784)
    png = samples.decode_png(imaging.render(probs, (28, 28), imaging.grid_columns(7), 2))
    assert png.shape == (2 * (3 * 28 + 2 * 2), 2 * (3 * 28 + 2 * 2))
    assert png[0, 0] == 0 and png[-1, -1] == imaging.GAP_LEVEL  # two empty cells at the end
    assert imaging.largest_scale(256, 16, (28, 28)) == 4096 // (16 * 28 + 15 * 2)
    assert imaging.largest_scale(1, 1, (28, 28)) == imaging.MAX_SCALE


@pytest.mark.parametrize("side", [28, 200])  # stored (one packet) and zlib-compressed
def test_png_round_trips_through_pil_exactly(side: int) -> None:
    rng = np.random.default_rng(side)
    pixels = rng.integers(0, 256, (side, side + 3), dtype=np.uint8)
    assert np.array_equal(samples.decode_png(png.encode(pixels)), pixels)
    blank = np.zeros_like(pixels)  # stored below one packet's size, compressed above it
    raw_size = side * (side + 4)  # a filter byte per row
    assert (len(png.encode(blank)) > raw_size) == (side == 28)
    single = imaging.render(pixels.reshape(1, -1) / 255.0, pixels.shape, 1, 1)
    assert np.array_equal(samples.decode_png(single), pixels)
