"""API v2, the Open Inference Protocol: driven by the real tritonclient over a real server,
and by raw HTTP for the JSON forms other clients send."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from service.http.app import create_app
from service.settings import Settings
from tests.reliability.server import request
from tests.service import service_samples as samples
from tests.service.jobs_helpers import binary_x
from tests.service.service_helpers import batched_sizes, concurrently, install, metric, serving

MAX_BATCH = 8
LATENT = 8  # the tiny test models' latent_dim


@pytest.fixture(scope="module")
def port(published: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The real server (uvicorn + the guards) serving model a as version 1."""
    root = tmp_path_factory.mktemp("v2")
    (root / "vae").mkdir()
    install(root, published["a"], 1)
    settings = Settings(
        model_repository=root,
        embedded_model_dir=root / "none",
        static_dir=root / "none",
        max_batch=MAX_BATCH,
        log_level="warning",
    )
    with serving(settings) as bound:
        yield bound


@pytest.fixture
def triton_client(port: int) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    yield client
    client.close()


def tensor(name: str, values: np.ndarray, binary: bool = True, datatype: str = "FP32") -> Any:
    item = triton.InferInput(name, list(values.shape), datatype)
    item.set_data_from_numpy(values, binary_data=binary)
    return item


def json_input(name: str, values: np.ndarray, datatype: str = "FP32") -> dict[str, Any]:
    """An input tensor as JSON, its data flat."""
    data = values.reshape(-1).tolist()
    return {"name": name, "shape": list(values.shape), "datatype": datatype, "data": data}


def binary_body(x: np.ndarray) -> tuple[bytes, bytes]:
    """(header, header + x as binary data) of a vae request."""
    declared = {"name": "x", "shape": list(x.shape), "datatype": "FP32"}
    declared["parameters"] = {"binary_data_size": x.nbytes}
    header = json.dumps({"inputs": [declared]}).encode()
    return header, header + x.tobytes()


def status_of(call: Callable[[], object]) -> str | None:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status()


def test_server_health_and_metadata(triton_client: triton.InferenceServerClient) -> None:
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    metadata = triton_client.get_server_metadata()
    assert metadata["name"] == "vae-mnist" and "binary_tensor_data" in metadata["extensions"]


@pytest.mark.parametrize(
    ("model", "inputs", "outputs"),
    [
        ("encoder", {"x": 784}, {"mu": LATENT, "logvar": LATENT}),
        ("decoder", {"z": LATENT}, {"probs": 784, "logits": 784}),
        ("vae", {"x": 784}, {"probs": 784, "mu": LATENT, "logvar": LATENT}),
    ],
)
def test_model_metadata_and_readiness(
    triton_client: triton.InferenceServerClient,
    model: str,
    inputs: dict[str, int],
    outputs: dict[str, int],
) -> None:
    for version in ("", "1"):
        metadata = triton_client.get_model_metadata(model, version)
        assert metadata["name"] == model and metadata["versions"] == ["1"]
        assert {t["name"]: t["shape"] for t in metadata["inputs"]} == {
            name: [-1, width] for name, width in inputs.items()
        }
        assert {t["name"]: t["shape"] for t in metadata["outputs"]} == {
            name: [-1, width] for name, width in outputs.items()
        }
        assert all(t["datatype"] == "FP32" for t in metadata["inputs"] + metadata["outputs"])
        assert triton_client.is_model_ready(model, version)
    assert not triton_client.is_model_ready(model, "2")
    config = triton_client.get_model_config(model)
    assert config["max_batch_size"] == MAX_BATCH


@pytest.mark.parametrize("rows", [1, 7, MAX_BATCH])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_vae_infer_reconstructs_like_the_encoder_and_decoder(
    triton_client: triton.InferenceServerClient, rows: int, binary: bool
) -> None:
    x = binary_x(rows, rows)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("probs", "mu")]
    result = triton_client.infer(
        "vae", [tensor("x", x, binary)], outputs=outputs, request_id=f"r{rows}"
    )
    assert result.get_response()["id"] == f"r{rows}"
    assert result.get_response()["model_version"] == "1"
    probs, mu = result.as_numpy("probs"), result.as_numpy("mu")
    assert probs.shape == (rows, 784) and mu.shape == (rows, LATENT)
    assert result.as_numpy("logvar") is None  # not asked for
    encoded = triton_client.infer("encoder", [tensor("x", x, binary)])
    np.testing.assert_allclose(encoded.as_numpy("mu"), mu, atol=1e-6)
    decoded = triton_client.infer("decoder", [tensor("z", mu, binary)])
    np.testing.assert_allclose(decoded.as_numpy("probs"), probs, atol=1e-4)
    logits = decoded.as_numpy("logits")
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), decoded.as_numpy("probs"), atol=1e-5)


def test_a_version_named_explicitly(triton_client: triton.InferenceServerClient) -> None:
    x = binary_x(2, 0)
    named = triton_client.infer("vae", [tensor("x", x)], model_version="1")
    served = triton_client.infer("vae", [tensor("x", x)])
    assert np.array_equal(named.as_numpy("probs"), served.as_numpy("probs"))


def test_bad_requests_get_the_protocols_errors(
    triton_client: triton.InferenceServerClient,
) -> None:
    x = binary_x(2, 0)
    calls = {
        "wrong shape": (lambda: triton_client.infer("vae", [tensor("x", x[:, :700])]), "400"),
        "wrong datatype": (
            lambda: triton_client.infer("vae", [tensor("x", x.astype(np.int32), True, "INT32")]),
            "400",
        ),
        "wrong tensor name": (lambda: triton_client.infer("decoder", [tensor("x", x)]), "400"),
        "too many rows": (
            lambda: triton_client.infer("vae", [tensor("x", binary_x(MAX_BATCH + 1, 0))]),
            "400",
        ),
        "unknown model": (lambda: triton_client.infer("gan", [tensor("x", x)]), "404"),
        "unknown version": (
            lambda: triton_client.infer("vae", [tensor("x", x)], model_version="9"),
            "404",
        ),
        "metadata of an unknown model": (lambda: triton_client.get_model_metadata("gan"), "404"),
    }
    for case, (call, status) in calls.items():
        assert status_of(call) == status, case


def raw_infer(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    return request(port, "POST", "/v2/models/vae/infer", body, headers)


def test_malformed_binary_headers_are_400(port: int) -> None:
    header, body = binary_body(binary_x(1, 0))
    cases = {
        "not a number": "twelve",
        "longer than the body": str(len(body) + 1),
        "zero": "0",
        "cuts the JSON": str(len(header) - 3),
    }
    for case, length in cases.items():
        status, _, reply = raw_infer(port, body, {"Inference-Header-Content-Length": length})
        assert status == 400, case
        assert set(json.loads(reply)) == {"error"}, case
    length = {"Inference-Header-Content-Length": str(len(header))}
    extra = raw_infer(port, body + b"\0\0\0\0", length)
    assert extra[0] == 400 and b"binary data has" in extra[2]
    nan = np.full((1, 784), np.nan, np.float32).tobytes()
    status, _, reply = raw_infer(port, header + nan, length)
    assert status == 400 and b"NaN" in reply


# Raw JSON, as clients other than tritonclient send it (the real app, its lifespan running).


@pytest.fixture
def v2_client(
    repo: Path, published: dict[str, Path], make_settings: Callable[..., Settings]
) -> Iterator[TestClient]:
    install(repo, published["a"], 1)
    with TestClient(create_app(make_settings(max_batch=MAX_BATCH, max_body_bytes=64 * 1024))) as c:
        yield c


def post_json(client: TestClient, model: str, document: dict[str, Any]) -> Any:
    return client.post(f"/v2/models/{model}/infer", json=document)


def test_nested_data_and_no_optional_fields(v2_client: TestClient) -> None:
    x = binary_x(2, 3)
    flat = post_json(v2_client, "vae", {"inputs": [json_input("x", x)]})
    nested_input = {**json_input("x", x), "data": x.tolist()}
    nested = post_json(v2_client, "vae", {"inputs": [nested_input]})
    assert flat.status_code == nested.status_code == 200
    assert flat.headers["x-model-version"] == "1"
    assert flat.headers["content-type"] == "application/json"
    body = flat.json()
    assert body == nested.json() and "id" not in body
    assert [o["name"] for o in body["outputs"]] == ["probs", "mu", "logvar"]
    assert body["outputs"][0]["shape"] == [2, 784] and len(body["outputs"][0]["data"]) == 2 * 784


def test_uint8_pixels_are_scaled_by_1_over_255(v2_client: TestClient) -> None:
    x = binary_x(1, 4)
    as_float = post_json(v2_client, "encoder", {"inputs": [json_input("x", x)]})
    pixels = json_input("x", (x * 255).astype(np.uint8), "UINT8")
    as_bytes = post_json(v2_client, "encoder", {"inputs": [pixels]})
    assert as_float.json()["outputs"] == as_bytes.json()["outputs"]


@pytest.mark.parametrize(
    ("document", "status", "says"),
    [
        ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0, 1, 0]}]},
         400, "expected [rows, 784]"),
        ({"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": [0] * 10}]},
         400, "10 values"),
        ({"inputs": [{"name": "x", "shape": [1, 784], "datatype": "BYTES", "data": ["a"] * 784}]},
         400, "datatype"),
        ({"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": ["a"] * 784}]},
         400, "numbers"),
        ({"inputs": []}, 400, "inputs"),
        ({"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": [0] * 784}],
          "outputs": [{"name": "pixels"}]}, 400, "pixels"),
    ],
)  # fmt: skip
def test_bad_json_requests(v2_client: TestClient, document: Any, status: int, says: str) -> None:
    response = post_json(v2_client, "vae", document)
    assert response.status_code == status and says in response.json()["error"]


def test_v2_errors_keep_the_protocols_form(v2_client: TestClient) -> None:
    too_big = v2_client.post("/v2/models/vae/infer", content=b"[" * (65 * 1024))
    assert too_big.status_code == 413 and set(too_big.json()) == {"error"}
    not_json = v2_client.post("/v2/models/vae/infer", content=b"{nope")
    assert not_json.status_code == 400 and set(not_json.json()) == {"error"}
    nowhere = v2_client.get("/v2/nowhere")
    assert nowhere.status_code == 404 and set(nowhere.json()) == {"error"}
    assert v2_client.get("/v2/health/ready").json() == {"ready": True}


def test_vae_equals_v1_reconstruct_for_a_28x28_input(v2_client: TestClient) -> None:
    v1 = v2_client.post(
        "/v1/reconstruct?preprocess=none",
        content=samples.digit_png(),
        headers={"content-type": "image/png", "accept": "application/json"},
    ).json()
    x = np.array(v1["inputs"], dtype=np.float32)
    v2 = post_json(v2_client, "vae", {"inputs": [json_input("x", x)]})
    probs = next(o for o in v2.json()["outputs"] if o["name"] == "probs")
    np.testing.assert_allclose(probs["data"], v1["probs"][0], atol=1e-6)


def test_v2_requests_are_counted_and_batched_under_concurrency(
    v2_client: TestClient, make_settings: Callable[..., Settings]
) -> None:
    post_json(v2_client, "vae", {"inputs": [json_input("x", binary_x(1, 5))]})
    route = "/v2/models/{name}/infer"
    assert metric(v2_client, "vae_http_requests_total", route=route, status="200") == 1
    assert metric(v2_client, "vae_inference_duration_seconds_count", operation="infer:vae") == 1
    header, body = binary_body(binary_x(1, 5))
    kind = "application/octet-stream"
    requests = [("/v2/models/vae/infer", body, kind)] * 6
    app = create_app(make_settings(max_batch=MAX_BATCH))
    answers = asyncio.run(
        concurrently(app, requests, {"Inference-Header-Content-Length": str(len(header))})
    )
    assert all(a.status_code == 200 for a in answers)
    assert len({a.content for a in answers}) == 1
    batches, served = batched_sizes(app)
    assert served == 6 and batches < 6
