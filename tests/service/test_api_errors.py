"""Every bad input is a specific 4xx application/problem+json naming the field; never a 5xx."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx2 import Response

from service.http.app import create_app
from service.http.problems import Problem
from service.settings import Settings
from tests.service import service_samples as samples
from tests.service.service_helpers import install

PNG = {"content-type": "image/png"}


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    status: int
    field: str | None = None  # the problem's field
    code: str | None = None  # errors[0].type
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    content: bytes | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    json_body: Any = None


def image(
    path: str,
    data: bytes,
    status: int = 422,
    field: str | None = "body",
    code: str | None = None,
    **params: Any,
) -> Case:
    return Case("POST", path, status, field, code, params, data, PNG)


def batch(
    path: str,
    files: list[bytes],
    status: int = 422,
    field: str | None = None,
    code: str | None = None,
    **params: Any,
) -> Case:
    body, content_type = samples.multipart(files)
    return Case("POST", path, status, field, code, params, body, {"content-type": content_type})


def decode(z: Any, field: str | None = "body.z", code: str | None = None) -> Case:
    return Case("POST", "/v1/decode", 422, field, code, json_body={"z": z})


def raw_json(path: str, text: str, field: str | None = "body", code: str | None = None) -> Case:
    return Case(
        "POST",
        path,
        422,
        field,
        code,
        content=text.encode(),
        headers={"content-type": "application/json"},
    )


def sample(status: int = 422, field: str | None = None, **params: Any) -> Case:
    return Case("GET", "/v1/sample", status, field, None, params)


NESTED = "[" * 5000 + "]" * 5000
TWO_TEXT_FIELDS = (
    b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--b--\r\n',
    "multipart/form-data; boundary=b",
)

CATALOG: dict[str, Case] = {
    # Images: what the body holds.
    "empty-body": image("/v1/reconstruct", b"", code="empty"),
    "text-as-png": image("/v1/reconstruct", b"just some text", code="not_an_image"),
    "zip": image("/v1/reconstruct", samples.zip_bytes(), code="not_an_image"),
    "truncated-png": image("/v1/reconstruct", samples.truncated_png(), code="corrupt_image"),
    "png-bad-crc": image("/v1/reconstruct", samples.bad_crc_png(), code="corrupt_image"),
    "one-pixel": image(
        "/v1/reconstruct", samples.gray_array_png(np.zeros((1, 1))), code="blank_image"
    ),
    "10000x10000": image(
        "/v1/reconstruct", samples.png_header_only(10000, 10000), code="image_too_large"
    ),
    "decompression-bomb": image("/v1/encode", samples.real_bomb_png(), code="image_too_large"),
    "animated-gif": image("/v1/score", samples.animated_gif(), code="animated_image"),
    "none-needs-28x28": image(
        "/v1/reconstruct", samples.photo_png(), code="wrong_size", preprocess="none"
    ),
    # Content types.
    "text-plain": Case(
        "POST",
        "/v1/reconstruct",
        415,
        "header.content-type",
        content=b"x",
        headers={"content-type": "text/plain"},
    ),
    "no-content-type": Case(
        "POST", "/v1/encode", 415, "header.content-type", content=samples.digit_png()
    ),
    "json-to-reconstruct": Case(
        "POST", "/v1/reconstruct", 415, "header.content-type", json_body={"z": [[0]]}
    ),
    "png-to-decode": image(
        "/v1/decode", samples.digit_png(), status=415, field="header.content-type"
    ),
    "png-to-interpolate": image(
        "/v1/interpolate", samples.digit_png(), status=415, field="header.content-type"
    ),
    # Multipart batches.
    "multipart-no-file": Case(
        "POST",
        "/v1/reconstruct",
        422,
        "files",
        "no_files",
        content=TWO_TEXT_FIELDS[0],
        headers={"content-type": TWO_TEXT_FIELDS[1]},
    ),
    "multipart-too-many-files": batch(
        "/v1/reconstruct", [samples.digit_png()] * 5, field="files", code="too_many_files"
    ),
    "multipart-bad-image": batch(
        "/v1/encode", [samples.digit_png(), b"nope"], field="files[1]", code="not_an_image"
    ),
    "multipart-no-boundary": Case(
        "POST",
        "/v1/reconstruct",
        422,
        "header.content-type",
        content=b"x",
        headers={"content-type": "multipart/form-data"},
    ),
    "multipart-unterminated": Case(
        "POST",
        "/v1/reconstruct",
        422,
        "body",
        "bad_multipart",
        content=b'--b\r\nContent-Disposition: form-data; name="files"\r\n\r\nabc',
        headers={"content-type": "multipart/form-data; boundary=b"},
    ),
    "interpolate-three-images": batch(
        "/v1/interpolate", [samples.digit_png()] * 3, field="files", code="too_many_files"
    ),
    "interpolate-one-image": batch(
        "/v1/interpolate", [samples.digit_png()], field="files", code="need_two_images"
    ),
    # z vectors.
    "z-wrong-length": decode([[0.0] * 7], field="body.z[0]", code="wrong_latent_size"),
    "z-second-wrong-length": decode(
        [[0.0] * 8, [0.0] * 9], field="body.z[1]", code="wrong_latent_size"
    ),
    "z-nan": raw_json(
        "/v1/decode",
        '{"z": [[NaN, 0, 0, 0, 0, 0, 0, 0]]}',
        field="body.z[0][0]",
        code="finite_number",
    ),
    "z-inf": raw_json(
        "/v1/decode",
        '{"z": [[0, 0, 0, Infinity, 0, 0, 0, 0]]}',
        field="body.z[0][3]",
        code="finite_number",
    ),
    "z-huge": decode([[1e300] + [0.0] * 7], field="body.z[0][0]", code="less_than_equal"),
    "z-not-a-list": decode(5, code="list_type"),
    "z-strings": decode([["a"] * 8], field="body.z[0][0]", code="float_type"),
    "z-numeric-strings": decode([["1.5"] * 8], field="body.z[0][0]", code="float_type"),
    "z-booleans": decode([[True] * 8], field="body.z[0][0]", code="float_type"),
    "z-empty": decode([], code="too_short"),
    "z-too-many": decode([[0.0] * 8] * 5, code="too_many_vectors"),
    "z-missing": Case("POST", "/v1/decode", 422, "body.z", "missing", json_body={}),
    "z-extra-field": Case(
        "POST", "/v1/decode", 422, "body.w", "extra_forbidden", json_body={"z": [[0.0] * 8], "w": 1}
    ),
    "json-invalid": raw_json("/v1/decode", '{"z": [[0, 0', code="json_invalid"),
    "json-deeply-nested": raw_json("/v1/decode", NESTED, code="json_invalid"),
    "interpolate-one-z": Case(
        "POST", "/v1/interpolate", 422, "body.z", "too_short", json_body={"z": [[0.0] * 8]}
    ),
    "interpolate-z-wrong-length": Case(
        "POST",
        "/v1/interpolate",
        422,
        "body.z[1]",
        "wrong_latent_size",
        json_body={"z": [[0.0] * 8, [0.0] * 3]},
    ),
    # Query values.
    "n-zero": sample(field="query.n", n=0),
    "n-negative": sample(field="query.n", n=-1),
    "n-huge": sample(field="query.n", n=10**9),
    "n-text": sample(field="query.n", n="abc"),
    "seed-negative": sample(field="query.seed", seed=-1),
    "seed-too-big": sample(field="query.seed", seed=2**64),
    "temperature-nan": sample(field="query.temperature", temperature="nan"),
    "temperature-inf": sample(field="query.temperature", temperature="inf"),
    "temperature-negative": sample(field="query.temperature", temperature=-1),
    "scale-zero": sample(field="query.scale", scale=0),
    "scale-too-large": sample(field="query.scale", scale=17),
    "mode-banana": image(
        "/v1/reconstruct",
        samples.digit_png(),
        field="query.mode",
        code="literal_error",
        mode="banana",
    ),
    "preprocess-foo": image(
        "/v1/encode",
        samples.digit_png(),
        field="query.preprocess",
        code="literal_error",
        preprocess="foo",
    ),
    "binarize-maybe": image(
        "/v1/reconstruct",
        samples.digit_png(),
        field="query.binarize",
        code="bool_parsing",
        binarize="maybe",
    ),
    "k-zero": image("/v1/score", samples.digit_png(), field="query.k", k=0),
    "k-over-limit": image("/v1/score", samples.digit_png(), field="query.k", k=1001),
    "steps-one": Case(
        "POST",
        "/v1/interpolate",
        422,
        "query.steps",
        params={"steps": 1},
        json_body={"z": [[0.0] * 8] * 2},
    ),
    "method-foo": Case(
        "POST",
        "/v1/interpolate",
        422,
        "query.method",
        params={"method": "foo"},
        json_body={"z": [[0.0] * 8] * 2},
    ),
    # Routing.
    "unknown-path": Case("GET", "/v1/nothing-here", 404),
    "wrong-method": Case("DELETE", "/v1/sample", 405),
}


@pytest.fixture(scope="module")
def small_client(
    tmp_path_factory: pytest.TempPathFactory, published: dict[str, Path]
) -> Iterator[TestClient]:
    """max_batch=4 so that batch limits are cheap to reach."""
    root = tmp_path_factory.mktemp("errors-repo")
    install(root, published["a"], 1)
    settings = Settings(
        model_repository=root,
        embedded_model_dir=root / "none",
        static_dir=root / "none",
        max_batch=4,
    )
    with TestClient(create_app(settings), raise_server_exceptions=True) as client:
        yield client


def send(client: TestClient, case: Case) -> Response:
    return client.request(
        case.method,
        case.path,
        params=case.params,
        content=case.content,
        headers=case.headers,
        json=case.json_body,
    )


def assert_problem(
    response: Response, status: int, field: str | None = None, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-model-version"] == "1"
    body = response.json()
    Problem.model_validate(body)
    assert body["status"] == status and body["detail"] and body["title"]
    assert body["type"].startswith("https://vae-mnist.dev/problems/")
    if field is not None:
        assert body["field"] == field, body
        assert field in body["detail"]
    if code is not None:
        assert body["errors"][0]["type"] == code, body
    return body


@pytest.mark.parametrize("name", list(CATALOG))
def test_bad_input_catalog(small_client: TestClient, name: str) -> None:
    case = CATALOG[name]
    assert_problem(send(small_client, case), case.status, case.field, case.code)


def test_unknown_literal_names_the_allowed_values(small_client: TestClient) -> None:
    body = assert_problem(send(small_client, CATALOG["mode-banana"]), 422, "query.mode")
    assert "'mean' or 'sample'" in body["detail"] and '"banana"' in body["detail"]


def test_n_out_of_range_says_the_range(small_client: TestClient) -> None:
    body = assert_problem(send(small_client, CATALOG["n-huge"]), 422, "query.n")
    assert "less than or equal to 256" in body["detail"]


@pytest.mark.parametrize(
    "data",
    [samples.sixteen_bit_png(), samples.cmyk_jpeg(), samples.palette_png_with_alpha()],
    ids=["16-bit-png", "cmyk-jpeg", "palette-png-with-alpha"],
)
def test_unusual_but_valid_images_are_handled(small_client: TestClient, data: bytes) -> None:
    response = small_client.post("/v1/reconstruct", content=data, headers=PNG)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"


@pytest.fixture
def limited_client(
    repo: Path, published: dict[str, Path], make_settings: Callable[..., Settings]
) -> Iterator[TestClient]:
    install(repo, published["a"], 1)
    with TestClient(create_app(make_settings(max_body_bytes=4096))) as client:
        yield client


def test_body_over_the_limit_with_content_length(limited_client: TestClient) -> None:
    response = limited_client.post("/v1/reconstruct", content=b"\0" * 4097, headers=PNG)
    body = assert_problem(response, 413, "body")
    assert "4096 bytes" in body["detail"]


def test_body_over_the_limit_chunked(limited_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"\0" * 1000

    response = limited_client.post("/v1/reconstruct", content=chunks(), headers=PNG)
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "body")


def test_json_over_the_limit_chunked(limited_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"z": [' + b"[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]," * 200

    response = limited_client.post(
        "/v1/decode", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_problem(response, 413, "body")


def test_fifty_megabyte_json_is_413(limited_client: TestClient) -> None:
    body = json.dumps({"z": [[0.0] * 8]}).encode() + b" " * (50 * 2**20)
    response = limited_client.post(
        "/v1/decode", content=body, headers={"content-type": "application/json"}
    )
    assert_problem(response, 413, "body")


def test_within_the_limit_still_works(limited_client: TestClient) -> None:
    response = limited_client.post("/v1/reconstruct", content=samples.digit_png(), headers=PNG)
    assert response.status_code == 200
