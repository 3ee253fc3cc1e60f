"""Plain PNGs read directly decode exactly as PIL decodes them; every other PNG, and every
defect, still gets PIL's treatment."""

from __future__ import annotations

import io
import itertools
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from service.images import png
from service.images.decoding import OpenedImage, open_image
from service.images.errors import ImageError
from service.images.preprocess import ImageOptions, model_inputs
from tests.service import service_samples as samples
from tests.service.service_samples import png_chunk

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_TYPES = {"L": 0, "RGB": 2, "LA": 4, "RGBA": 6}
MNIST = ImageOptions("mnist", binarize=False, threshold=0.5, shape=(28, 28))


def filtered(pixels: np.ndarray, filters: list[int]) -> bytes:
    """Scanlines of [H, W, C] uint8 pixels, row r filtered with filters[r % len(filters)]
    (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth; PNG spec, section 9)."""
    h, w, c = pixels.shape
    out = bytearray()
    prior = np.zeros(w * c, np.int64)
    for r in range(h):
        line = pixels[r].reshape(-1).astype(np.int64)
        left = np.concatenate([np.zeros(c, np.int64), line[:-c]])
        upper_left = np.concatenate([np.zeros(c, np.int64), prior[:-c]])
        kind = filters[r % len(filters)]
        if kind == 0:
            predictor = np.zeros_like(line)
        elif kind == 1:
            predictor = left
        elif kind == 2:
            predictor = prior
        elif kind == 3:
            predictor = (left + prior) // 2
        else:
            p = left + prior - upper_left
            pa, pb, pc = abs(p - left), abs(p - prior), abs(p - upper_left)
            nearest_up = np.where(pb <= pc, prior, upper_left)
            predictor = np.where((pa <= pb) & (pa <= pc), left, nearest_up)
        out.append(kind)
        out += ((line - predictor) % 256).astype(np.uint8).tobytes()
        prior = line
    return bytes(out)


def make_png(
    pixels: np.ndarray,
    mode: str,
    filters: list[int],
    idat_parts: int = 1,
    before: tuple[tuple[bytes, bytes], ...] = (),
    after: tuple[tuple[bytes, bytes], ...] = (),
    interlace: int = 0,
) -> bytes:
    """An 8-bit PNG of `pixels` in `mode`, written here byte by byte."""
    h, w = pixels.shape[:2]
    stream = zlib.compress(filtered(pixels.reshape(h, w, -1), filters))
    cut = np.linspace(0, len(stream), idat_parts + 1).astype(int)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, COLOUR_TYPES[mode], 0, 0, interlace)
    return (
        SIGNATURE
        + png_chunk(b"IHDR", ihdr)
        + b"".join(png_chunk(kind, data) for kind, data in before)
        + b"".join(png_chunk(b"IDAT", stream[a:b]) for a, b in itertools.pairwise(cut))
        + b"".join(png_chunk(kind, data) for kind, data in after)
        + png_chunk(b"IEND", b"")
    )


def pil_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return np.asarray(image)


def direct_pixels(data: bytes) -> np.ndarray:
    plain = png.read_plain(data)
    assert plain is not None, "a plain PNG was left to PIL"
    return np.asarray(png.decode(plain))


def random_pixels(seed: int, h: int, w: int, channels: int) -> np.ndarray:
    """[H, W] (one channel) or [H, W, C] uint8 with gradients, as in real images."""
    rng = np.random.default_rng(seed)
    pixels = (np.cumsum(rng.integers(0, 40, (h, w, channels)), axis=1) % 256).astype(np.uint8)
    return pixels[..., 0] if channels == 1 else pixels


@pytest.mark.parametrize("mode", list(COLOUR_TYPES))
@pytest.mark.parametrize(
    ("size", "filters", "idat_parts"),
    [
        ((28, 28), [0], 1),
        ((28, 28), [1], 1),
        ((28, 28), [2], 1),
        ((28, 28), [3], 1),
        ((28, 28), [4], 1),
        ((28, 28), [0, 1, 2, 3, 4], 3),
        ((1, 1), [4], 1),
        ((1, 37), [3], 1),
        ((53, 2), [2, 4], 2),
        ((131, 97), [4, 3, 1], 7),
    ],
)
def test_plain_png_decodes_exactly_as_pil(
    mode: str, size: tuple[int, int], filters: list[int], idat_parts: int
) -> None:
    channels = len(mode)
    pixels = random_pixels(sum(size) + channels, *size, channels)
    data = make_png(pixels, mode, filters, idat_parts)
    assert np.array_equal(pil_pixels(data), pixels)  # the test's writer is right
    assert np.array_equal(direct_pixels(data), pixels)


def test_neutral_chunks_are_skipped_and_pil_written_pngs_read_directly() -> None:
    pixels = random_pixels(7, 40, 30, 1)
    notes = ((b"gAMA", struct.pack(">I", 45455)), (b"tEXt", b"Comment\x00hand drawn"))
    data = make_png(pixels, "L", [4], before=notes, after=((b"tIME", bytes(7)),))
    assert np.array_equal(direct_pixels(data), pixels)
    for image in (Image.fromarray(pixels), Image.fromarray(pixels).convert("RGB")):
        written = samples.encode(image, optimize=True)  # PIL's adaptive filters, its chunks
        assert np.array_equal(direct_pixels(written), pil_pixels(written))


PIXELS = random_pixels(3, 28, 28, 1)
LEFT_TO_PIL = {
    "palette": samples.encode(Image.fromarray(PIXELS).convert("P")),
    "16-bit": samples.sixteen_bit_png(),
    "transparency chunk": samples.encode(Image.fromarray(PIXELS), transparency=0),
    "interlaced": make_png(PIXELS, "L", [0], interlace=1),
    "animated": samples.encode(
        Image.fromarray(PIXELS), save_all=True, append_images=[Image.fromarray(255 - PIXELS)]
    ),
    "unknown critical chunk": make_png(PIXELS, "L", [0], before=((b"ZZZZ", b"?"),)),
    "unknown ancillary chunk": make_png(PIXELS, "L", [0], after=((b"zzZz", b"?"),)),
    "no IEND": make_png(PIXELS, "L", [0])[:-12],
    "cut short": make_png(PIXELS, "L", [0])[:-20],
    "not a PNG": samples.encode(Image.fromarray(PIXELS), "BMP"),
    "too many chunks": make_png(PIXELS, "L", [0], after=((b"tEXt", b"a\x00b"),) * 64),
}


def two_idat_runs() -> bytes:
    stream = zlib.compress(filtered(PIXELS[..., None], [0]))
    ihdr = struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)
    return (
        SIGNATURE
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", stream[:50])
        + png_chunk(b"tEXt", b"a\x00b")
        + png_chunk(b"IDAT", stream[50:])
        + png_chunk(b"IEND", b"")
    )


LEFT_TO_PIL["two runs of IDAT"] = two_idat_runs()
LEFT_TO_PIL["zero width"] = (
    SIGNATURE
    + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 28, 8, 0, 0, 0, 0))
    + png_chunk(b"IDAT", zlib.compress(bytes(28)))
    + png_chunk(b"IEND", b"")
)


@pytest.mark.parametrize("case", list(LEFT_TO_PIL))
def test_other_pngs_are_left_to_pil(case: str) -> None:
    assert png.read_plain(LEFT_TO_PIL[case]) is None


def test_pils_pixel_limit_is_pils_to_enforce(monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_png(PIXELS, "L", [0])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 28 * 28 - 1)
    assert png.read_plain(data) is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL's way of lifting its limit
    assert png.read_plain(data) is not None


def test_pngs_left_to_pil_still_decode() -> None:
    for case in ("palette", "16-bit", "transparency chunk", "no IEND"):
        opened = open_image(LEFT_TO_PIL[case], "body", 28 * 28)
        assert isinstance(opened.source, Image.Image), case
        assert isinstance(model_inputs([(opened, MNIST)])[0], np.ndarray), case


def corrupt_plain(case: str) -> bytes:
    """A PNG that passes the header walk but whose data is defective."""
    ihdr = SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0))
    stream = zlib.compress(filtered(PIXELS[..., None], [4]))
    idat = {
        "bad zlib stream": png_chunk(b"IDAT", b"\x78\x9c" + bytes(40)),
        "zlib stream cut short": png_chunk(b"IDAT", stream[: len(stream) // 2]),
        "too few rows": png_chunk(b"IDAT", zlib.compress(filtered(PIXELS[:10, :, None], [4]))),
        "bad CRC of image data": png_chunk(b"IDAT", stream, crc=12345),
        "bad CRC of a text chunk": (
            png_chunk(b"tEXt", b"a\x00b", crc=1) + png_chunk(b"IDAT", stream)
        ),
    }[case]
    return ihdr + idat + png_chunk(b"IEND", b"")


def verdict(opened: OpenedImage) -> np.ndarray | str:
    """The model input, or the problem's code."""
    result = model_inputs([(opened, MNIST)])[0]
    return result.code if isinstance(result, ImageError) else result


@pytest.mark.parametrize("case", ["bad zlib stream", "zlib stream cut short"])
def test_bad_image_data_is_corrupt_as_pil_says(case: str) -> None:
    data = corrupt_plain(case)
    assert png.read_plain(data) is not None  # the cheap header walk does not see the defect
    with Image.open(io.BytesIO(data)) as pil_image:
        assert verdict(OpenedImage("body", pil_image)) == "corrupt_image"
    assert verdict(open_image(data, "body", 28 * 28)) == "corrupt_image"


@pytest.mark.parametrize("case", ["too few rows", "bad CRC of image data"])
def test_defects_pil_accepts_decode_as_pil_does(case: str) -> None:
    data = corrupt_plain(case)  # PIL fills missing rows with 0 and skips the IDAT CRC
    assert png.read_plain(data) is not None
    with Image.open(io.BytesIO(data)) as pil_image:
        through_pil = verdict(OpenedImage("body", pil_image))
    direct = verdict(open_image(data, "body", 28 * 28))
    assert isinstance(direct, np.ndarray) and isinstance(through_pil, np.ndarray)
    assert np.array_equal(direct, through_pil)


def test_a_bad_chunk_crc_is_a_corrupt_image() -> None:
    data = corrupt_plain("bad CRC of a text chunk")
    with pytest.raises(UnidentifiedImageError):  # PIL refuses the file outright
        Image.open(io.BytesIO(data))
    assert verdict(open_image(data, "body", 28 * 28)) == "corrupt_image"


def test_size_limit_applies_before_decoding() -> None:
    data = make_png(random_pixels(1, 30, 30, 1), "L", [0])
    with pytest.raises(ImageError) as caught:
        open_image(data, "body", 28 * 28)
    assert caught.value.code == "image_too_large" and "30x30" in caught.value.message
