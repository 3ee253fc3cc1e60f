"""The image routes over HTTP, with the real app and its lifespan: reconstruct, encode, score,
interpolate."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import ExifTags, Image

from tests.service import service_samples as samples

PNG_BODY = {"content-type": "image/png"}
JSON_ACCEPT = {"accept": "application/json"}
AS_JSON = {**PNG_BODY, **JSON_ACCEPT}
JPEG_AS_JSON = {"content-type": "image/jpeg", **JSON_ACCEPT}


def post_image(
    client: TestClient, path: str, data: bytes, accept_json: bool = False, **params: object
):
    return client.post(
        path, content=data, headers=AS_JSON if accept_json else PNG_BODY, params=params
    )


def post_batch(
    client: TestClient, path: str, files: list[bytes], accept_json: bool = False, **params: object
):
    body, content_type = samples.multipart(files)
    headers = {"content-type": content_type}
    if accept_json:
        headers["accept"] = "application/json"
    return client.post(path, content=body, headers=headers, params=params)


def test_reconstruct_returns_a_png_of_the_image_size(client: TestClient) -> None:
    response = post_image(client, "/v1/reconstruct", samples.photo_png())
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-model-version"] == "1"
    assert samples.decode_png(response.content).shape == (28, 28)


def test_reconstruct_json_has_inputs_z_and_probabilities(client: TestClient) -> None:
    body = post_image(client, "/v1/reconstruct", samples.photo_png(), accept_json=True).json()
    assert body["model_version"] == 1 and body["image_shape"] == [28, 28] and body["mode"] == "mean"
    inputs, probs, z = (np.array(body[k]) for k in ("inputs", "probs", "z"))
    assert inputs.shape == (1, 784) and set(np.unique(inputs)) <= {0.0, 1.0}
    assert probs.shape == (1, 784) and np.all((probs >= 0) & (probs <= 1))
    assert z.shape == (1, 8) and body["seed"] is None


def test_png_bytes_are_the_json_probabilities(client: TestClient) -> None:
    png = samples.decode_png(post_image(client, "/v1/reconstruct", samples.photo_png()).content)
    probs = np.array(
        post_image(client, "/v1/reconstruct", samples.photo_png(), True).json()["probs"]
    )
    assert np.array_equal(png.reshape(-1), np.rint(probs[0] * 255).astype(np.uint8))


def test_reconstruct_batch_is_a_grid_and_scale_enlarges_it(client: TestClient) -> None:
    files = [samples.photo_png(), samples.digit_png(), samples.cmyk_jpeg()]
    grid = samples.decode_png(post_batch(client, "/v1/reconstruct", files).content)
    assert grid.shape == (58, 58)  # 2x2 cells of 28 with a 2-pixel gap
    scaled = samples.decode_png(post_batch(client, "/v1/reconstruct", files, scale=3).content)
    assert scaled.shape == (174, 174)
    assert np.array_equal(scaled[::3, ::3], grid)
    body = post_batch(client, "/v1/reconstruct", files, accept_json=True).json()
    assert len(body["probs"]) == len(body["inputs"]) == len(body["z"]) == 3


def test_reconstruct_batch_rows_equal_single_requests(client: TestClient) -> None:
    files = [samples.photo_png(), samples.digit_png()]
    batch = post_batch(client, "/v1/reconstruct", files, accept_json=True).json()["probs"]
    for row, data in zip(batch, files, strict=True):
        single = post_image(client, "/v1/reconstruct", data, accept_json=True).json()["probs"][0]
        assert np.allclose(row, single, atol=1e-6)


def test_reconstruct_sample_mode_is_seeded(client: TestClient) -> None:
    first = post_image(client, "/v1/reconstruct", samples.photo_png(), mode="sample", seed=5)
    again = post_image(client, "/v1/reconstruct", samples.photo_png(), mode="sample", seed=5)
    other = post_image(client, "/v1/reconstruct", samples.photo_png(), mode="sample", seed=6)
    assert first.content == again.content != other.content
    assert first.headers["x-seed"] == "5"
    unseeded = post_image(
        client, "/v1/reconstruct", samples.photo_png(), True, mode="sample"
    ).json()
    assert isinstance(unseeded["seed"], int)
    replay = post_image(
        client, "/v1/reconstruct", samples.photo_png(), True, mode="sample", seed=unseeded["seed"]
    )
    assert replay.json()["probs"] == unseeded["probs"]


def test_preprocess_none_and_binarize_false(client: TestClient) -> None:
    body = post_image(
        client, "/v1/reconstruct", samples.digit_png(), True, preprocess="none", binarize="false"
    ).json()
    inputs = np.array(body["inputs"][0])
    assert np.any((inputs > 0) & (inputs < 1))


def bce(target: np.ndarray, probs: np.ndarray) -> float:
    """Mean per-pixel binary cross-entropy of `probs` against `target`, in nats."""
    p = np.clip(probs, 1e-6, 1 - 1e-6)
    return float(np.mean(-(target * np.log(p) + (1 - target) * np.log(1 - p))))


def test_a_photo_reconstructs_like_the_clean_digit(client: TestClient) -> None:
    """The measure: the preprocessed inputs differ in at most 5% of pixels, and the excess
    per-pixel BCE of the photo's reconstruction against the clean one (BCE minus the clean
    reconstruction's own entropy, i.e. the mean per-pixel KL) is under half that of a
    control: the same photo squashed to 28x28 without MNIST preprocessing."""
    clean = post_image(
        client, "/v1/reconstruct", samples.digit_png(), True, preprocess="none"
    ).json()
    photo = post_image(client, "/v1/reconstruct", samples.photo_png(), True).json()
    control = post_image(
        client, "/v1/reconstruct", samples.naive_photo_png(), True, preprocess="none"
    ).json()
    clean_x, photo_x = np.array(clean["inputs"][0]), np.array(photo["inputs"][0])
    assert np.mean(clean_x != photo_x) <= 0.05
    target = np.array(clean["probs"][0])
    entropy = bce(target, target)
    photo_excess = bce(target, np.array(photo["probs"][0])) - entropy
    control_excess = bce(target, np.array(control["probs"][0])) - entropy
    assert photo_excess < 0.5 * control_excess


def test_encode_returns_mu_and_logvar_and_z_when_asked(client: TestClient) -> None:
    plain = post_image(client, "/v1/encode", samples.photo_png()).json()
    assert plain["latent_dim"] == 8 and np.array(plain["mu"]).shape == (1, 8)
    assert np.array(plain["logvar"]).shape == (1, 8) and plain["z"] is None
    sampled = post_image(client, "/v1/encode", samples.photo_png(), sample="true", seed=3).json()
    assert np.array(sampled["z"]).shape == (1, 8) and sampled["seed"] == 3
    again = post_image(client, "/v1/encode", samples.photo_png(), sample="true", seed=3).json()
    assert again["z"] == sampled["z"]
    reconstructed = post_image(client, "/v1/reconstruct", samples.photo_png(), True).json()
    assert np.allclose(reconstructed["z"], plain["mu"])


def test_encode_batch(client: TestClient) -> None:
    body = post_batch(client, "/v1/encode", [samples.photo_png()] * 4).json()
    assert np.array(body["mu"]).shape == (4, 8)


def test_score_reports_nats_per_image_and_is_seeded(client: TestClient) -> None:
    files = [samples.photo_png(), samples.digit_png()]
    body = post_batch(client, "/v1/score", files, k=50, seed=1).json()
    assert body["k"] == 50 and body["unit"] == "nats" and len(body["scores"]) == 2
    inputs = post_batch(client, "/v1/reconstruct", files, True).json()["inputs"]
    for score, x in zip(body["scores"], inputs, strict=True):
        assert score["iwae_nll"] <= score["neg_elbo"] + 1e-9
        assert score["anomaly_score"] == pytest.approx(score["iwae_nll"] / (1 + sum(x)))
        assert score["neg_elbo"] == pytest.approx(score["reconstruction"] + score["kl"])
    assert post_batch(client, "/v1/score", files, k=50, seed=1).json() == body
    single = post_image(client, "/v1/score", samples.photo_png()).json()
    assert single["k"] == 100 and isinstance(single["seed"], int)


def test_interpolate_two_images_png_strip(client: TestClient) -> None:
    files = [samples.photo_png(), samples.digit_png()]
    strip = samples.decode_png(post_batch(client, "/v1/interpolate", files, steps=5).content)
    assert strip.shape == (28, 5 * 28 + 4 * 2)
    body = post_batch(client, "/v1/interpolate", files, accept_json=True, steps=5).json()
    mus = post_batch(client, "/v1/encode", files).json()["mu"]
    assert np.allclose(body["z"][0], mus[0], atol=1e-5) and np.allclose(
        body["z"][-1], mus[1], atol=1e-5
    )


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_interpolate_two_z_json(client: TestClient, method: str) -> None:
    ends = [[-1.0] * 8, [1.0] * 8]
    response = client.post(
        "/v1/interpolate",
        json={"z": ends},
        params={"steps": 3, "method": method},
        headers={"accept": "application/json"},
    )
    body = response.json()
    assert response.status_code == 200 and body["method"] == method
    assert np.allclose(body["z"][0], ends[0], atol=1e-5) and np.allclose(
        body["z"][2], ends[1], atol=1e-5
    )
    assert np.array(body["probs"]).shape == (3, 784)


def _jpeg(image: Image.Image, orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    return samples.encode(image, "JPEG", quality=95, exif=exif.tobytes())


def test_exif_orientation_is_applied_before_preprocessing(client: TestClient) -> None:
    """A phone photo stored sideways with Orientation=6 (display rotated 90 degrees clockwise)
    is the upright digit to the model (before: 154 of 784 input pixels differed)."""
    upright = samples.draw_seven(200, (60, 30, 150, 170), ink=0, paper=255)
    stored = upright.transpose(Image.Transpose.ROTATE_90)

    def inputs(data: bytes) -> np.ndarray:
        response = client.post("/v1/reconstruct", content=data, headers=JPEG_AS_JSON)
        assert response.status_code == 200, response.text
        return np.array(response.json()["inputs"][0])

    reference = inputs(_jpeg(upright))
    assert np.sum(inputs(_jpeg(stored, orientation=6)) != reference) <= 8
    assert np.sum(inputs(_jpeg(stored)) != reference) >= 50  # the control: sideways


def test_a_multipart_preamble_and_epilogue_are_ignored(client: TestClient) -> None:
    """RFC 2046 allows text before the first boundary and after the last."""
    body, content_type = samples.multipart([samples.digit_png()])
    body = b"This is a preamble.\r\n" + body + b"\r\nAn epilogue."
    response = client.post(
        "/v1/reconstruct", content=body, headers={"content-type": content_type, **JSON_ACCEPT}
    )
    assert response.status_code == 200, response.text
    plain = post_image(client, "/v1/reconstruct", samples.digit_png(), accept_json=True).json()
    assert response.json()["inputs"] == plain["inputs"]


def test_a_large_photo_is_reduced_but_still_found(client: TestClient) -> None:
    """A 3000x3000 page is reduced (by 3, to 1000x1000) before preprocessing; the digit comes
    out as from the same page drawn at 1000x1000."""
    big = samples.draw_seven(3000, (900, 450, 1800, 2100), ink=0, paper=255)
    small = samples.draw_seven(1000, (300, 150, 600, 700), ink=0, paper=255)
    rows = [
        np.array(post_image(client, "/v1/reconstruct", samples.encode(page), True).json()["inputs"])
        for page in (big, small)
    ]
    assert rows[0].sum() > 30 and np.sum(rows[0] != rows[1]) <= 20
