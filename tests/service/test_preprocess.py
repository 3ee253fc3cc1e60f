"""Decoding and MNIST-style preprocessing, without HTTP."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from service.preprocess import ImageOptions, mnist_like, model_input, open_image
from service.problems import ApiProblem
from tests.service import service_samples as samples

MNIST = ImageOptions("mnist", binarize=True, threshold=0.5, shape=(28, 28))
RAW = ImageOptions("none", binarize=True, threshold=0.5, shape=(28, 28))
MAX_PIXELS = 4096 * 4096


def to_input(data: bytes, options: ImageOptions = MNIST) -> np.ndarray:
    return model_input(open_image(data, "body", MAX_PIXELS), options).reshape(28, 28)


def problem_of(
    data: bytes, options: ImageOptions = MNIST, max_pixels: int = MAX_PIXELS
) -> ApiProblem:
    with pytest.raises(ApiProblem) as caught:
        model_input(open_image(data, "body", max_pixels), options)
    return caught.value


def test_photo_is_cropped_fitted_and_centred_by_mass() -> None:
    x = to_input(samples.photo_png())
    rows, cols = np.flatnonzero(x.any(axis=1)), np.flatnonzero(x.any(axis=0))
    assert rows[-1] - rows[0] + 1 == 20  # the taller side fills the 20-pixel box
    assert cols[-1] - cols[0] + 1 < 20  # the aspect ratio is kept
    ys, xs = np.nonzero(x)
    assert abs(ys.mean() - 13.5) <= 1.0 and abs(xs.mean() - 13.5) <= 1.0


def test_light_background_is_inverted_and_dark_one_is_not() -> None:
    dark = to_input(samples.encode(samples.draw_seven(200, (100, 20, 180, 140), 255, 0)))
    light = to_input(samples.photo_png())
    assert light[0, 0] == 0 and dark[0, 0] == 0  # background is black after preprocessing
    assert np.array_equal(light, dark)


@pytest.mark.parametrize(
    "data",
    [
        samples.cmyk_jpeg(),
        samples.encode(Image.open(samples.io.BytesIO(samples.photo_png())), "WEBP", lossless=True),
        samples.encode(Image.open(samples.io.BytesIO(samples.photo_png())), "BMP"),
        samples.encode(Image.open(samples.io.BytesIO(samples.photo_png())), "GIF"),
    ],
    ids=["cmyk-jpeg", "webp", "bmp", "gif"],
)
def test_other_formats_give_the_same_input_as_the_png(data: bytes) -> None:
    reference = to_input(samples.photo_png())
    assert np.mean(to_input(data) != reference) <= 0.01


def test_sixteen_bit_png_keeps_its_range() -> None:
    assert np.array_equal(
        to_input(samples.sixteen_bit_png(), RAW), to_input(samples.digit_png(), RAW)
    )


@pytest.mark.parametrize("ink", [(0, 0, 0), (255, 255, 255)], ids=["black-ink", "white-ink"])
def test_transparent_canvas_is_flattened_onto_a_contrasting_background(
    ink: tuple[int, int, int],
) -> None:
    x = to_input(samples.rgba_canvas_png(ink))
    assert 30 < x.sum() < 200 and x[0, 0] == 0


def test_palette_png_with_transparency_is_drawn_ink() -> None:
    x = to_input(samples.palette_png_with_alpha())
    assert 30 < x.sum() < 200


def test_preprocess_none_takes_the_image_as_it_is() -> None:
    raw = np.asarray(Image.open(samples.io.BytesIO(samples.digit_png())), dtype=np.float32) / 255
    assert np.array_equal(to_input(samples.digit_png(), RAW), (raw > 0.5).astype(np.float32))


def test_binarize_false_keeps_grey_levels() -> None:
    options = ImageOptions("none", binarize=False, threshold=0.5, shape=(28, 28))
    x = to_input(samples.digit_png(), options)
    assert np.any((x > 0) & (x < 1))


def test_centre_of_mass_is_moved_to_the_centre() -> None:
    ink = np.zeros((40, 40), dtype=np.float32)
    ink[2:12, 30:33] = 1.0  # a short bar in a corner
    x = mnist_like(ink, (28, 28), "body")
    ys, xs = np.nonzero(x > 0.5)
    assert abs(ys.mean() - 13.5) <= 1.0 and abs(xs.mean() - 13.5) <= 1.0


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty"),
        (b"hello, world", "not_an_image"),
        (samples.zip_bytes(), "not_an_image"),
        (samples.truncated_png(), "corrupt_image"),
        (samples.bad_crc_png(), "corrupt_image"),
        (samples.animated_gif(), "animated_image"),
        (samples.png_header_only(10000, 10000), "image_too_large"),
        (samples.real_bomb_png(), "image_too_large"),
        (samples.gray_array_png(np.zeros((1, 1))), "blank_image"),
        (samples.gray_array_png(np.full((64, 64), 200)), "blank_image"),
    ],
    ids=[
        "empty",
        "text",
        "zip",
        "truncated",
        "bad-crc",
        "animated",
        "huge-header",
        "bomb",
        "one-pixel",
        "blank",
    ],
)
def test_bad_images_are_422_naming_the_field(data: bytes, code: str) -> None:
    problem = problem_of(data)
    assert problem.status_code == 422
    assert problem.problem.field == "body"
    assert problem.problem.errors is not None and problem.problem.errors[0].type == code


def test_pixel_limit_is_a_setting() -> None:
    problem = problem_of(samples.photo_png(), max_pixels=199 * 199)
    assert problem.problem.errors is not None
    assert "200x200" in problem.detail and "39601" in problem.detail


def test_preprocess_none_refuses_other_sizes() -> None:
    problem = problem_of(samples.photo_png(), RAW)
    assert "28x28" in problem.detail and "200x200" in problem.detail
