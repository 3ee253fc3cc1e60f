"""Decoding and MNIST-style preprocessing, without HTTP."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from service.images import preprocess
from service.images.decoding import open_image
from service.images.errors import ImageError
from service.images.preprocess import ImageOptions, input_rows, model_inputs
from tests.service import service_samples as samples

MNIST = ImageOptions("mnist", binarize=True, threshold=0.5, shape=(28, 28))
RAW = ImageOptions("none", binarize=True, threshold=0.5, shape=(28, 28))
MAX_PIXELS = 4096 * 4096


def to_input(data: bytes, options: ImageOptions = MNIST) -> np.ndarray:
    return input_rows([open_image(data, "body", MAX_PIXELS)], options)[0].reshape(28, 28)


def problem_of(
    data: bytes, options: ImageOptions = MNIST, max_pixels: int = MAX_PIXELS
) -> ImageError:
    with pytest.raises(ImageError) as caught:
        input_rows([open_image(data, "body", max_pixels)], options)
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
    x, blank = preprocess._mnist_like(ink[None], (28, 28))  # the arithmetic itself, on floats
    assert blank == [False]
    x = x[0]
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
    assert problem.field == "body" and problem.code == code


def test_pixel_limit_is_a_setting() -> None:
    problem = problem_of(samples.photo_png(), max_pixels=199 * 199)
    assert problem.code == "image_too_large"
    assert "200x200" in problem.message and "39601" in problem.message


def test_preprocess_none_refuses_other_sizes() -> None:
    problem = problem_of(samples.photo_png(), RAW)
    assert "28x28" in problem.message and "200x200" in problem.message


# Images preprocessed together (the inference thread's batches) and one by one.


def varied_images() -> list[bytes]:
    """Digits of several sizes, pixel types and backgrounds, a blank one and a ~1-pixel one."""
    rng = np.random.default_rng(5)
    digit = samples.decode_png(samples.digit_png())
    shifted = np.roll(digit, (3, -4), axis=(0, 1))
    noisy = np.clip(digit * 0.7 + rng.uniform(0, 60, digit.shape), 0, 255)
    return [
        samples.digit_png(),
        samples.gray_array_png(shifted),
        samples.gray_array_png(255 - shifted),  # dark ink on a light page
        samples.gray_array_png(noisy),  # grey background, low contrast: stretched
        samples.photo_png(),  # 200x200: resized to fit the box
        samples.encode(samples.draw_seven(60, (5, 20, 40, 55), 30, 220)),
        samples.rgba_canvas_png((0, 0, 0)),
        samples.sixteen_bit_png(),
        samples.gray_array_png(np.zeros((28, 28))),  # blank
        samples.gray_array_png(np.pad(np.full((1, 1), 255), ((13, 14), (13, 14)))),
    ]


@pytest.mark.parametrize("options", [MNIST, RAW], ids=["mnist", "none"])
def test_images_preprocessed_together_equal_each_alone(options: ImageOptions) -> None:
    data = varied_images()
    mixed = [replace(options, binarize=i % 2 == 0) for i in range(len(data))]
    together = model_inputs(
        [
            (open_image(d, f"files[{i}]", MAX_PIXELS), o)
            for i, (d, o) in enumerate(zip(data, mixed, strict=True))
        ]
    )
    for i, (d, o) in enumerate(zip(data, mixed, strict=True)):
        alone = model_inputs([(open_image(d, f"files[{i}]", MAX_PIXELS), o)])[0]
        got = together[i]
        if isinstance(alone, ImageError):
            assert isinstance(got, ImageError) and got.message == alone.message
        else:
            assert isinstance(got, np.ndarray) and got.tobytes() == alone.tobytes()  # bit for bit
    problems = [r for r in together if isinstance(r, ImageError)]
    # With preprocess=none only the 28x28 images pass; with mnist only the blank one fails.
    expected = ["files[8]"] if options is MNIST else ["files[4]", "files[5]", "files[6]"]
    assert [p.field for p in problems] == expected


def test_a_centre_between_two_pixels_rounds_the_same_way_in_any_batch() -> None:
    # A 4-pixel-wide bar of 20 rows: its centre of mass is exactly 1.5 pixels from its
    # left edge, so the offset (13.5 - 1.5 = 12) is exact; with uneven ink it is not.
    bar = np.zeros((28, 28))
    bar[4:24, 10:14] = 255
    uneven = bar.copy()
    uneven[4:24, 13] = 128
    one = model_inputs([(open_image(samples.gray_array_png(bar), "body", MAX_PIXELS), MNIST)])[0]
    assert isinstance(one, np.ndarray)
    cols = np.flatnonzero(one.reshape(28, 28).any(axis=0))
    assert cols.tolist() == [12, 13, 14, 15]
    batch = [
        (open_image(samples.gray_array_png(a), "body", MAX_PIXELS), MNIST)
        for a in (uneven, bar, uneven)
    ]
    assert model_inputs(batch)[1].tobytes() == one.tobytes()  # type: ignore[union-attr]
