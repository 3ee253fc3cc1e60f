"""healthz, readyz, metrics, /v1/models, OpenAPI, the page mount, and the no-model state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.settings import Settings
from tests.service import service_samples as samples
from tests.service.service_helpers import install, metric

OPERATIONS = [
    ("post", "/v1/reconstruct"),
    ("post", "/v1/encode"),
    ("post", "/v1/decode"),
    ("get", "/v1/sample"),
    ("post", "/v1/score"),
    ("post", "/v1/interpolate"),
    ("get", "/v1/models"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
]


def test_healthz_and_readyz(client: TestClient) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == "1"
    assert health.headers["x-model-version"] == ready.headers["x-model-version"] == "1"


def test_models_reports_the_served_manifest(client: TestClient, published: dict[str, Path]) -> None:
    body = client.get("/v1/models").json()
    assert body["ready"] is True and body["serving"]["version"] == 1
    assert body["serving"]["source"] == "repository"
    assert body["serving"]["manifest"]["latent_dim"] == 8
    assert body["serving"]["manifest"]["training"]["preset"] == "tiny"
    assert body["versions"] == [
        {"version": 1, "source": "repository", "status": "serving", "reason": None}
    ]
    assert "serving version 1" in body["detail"]


def test_metrics_count_requests_latency_inference_and_model(client: TestClient) -> None:
    before = metric(client, "vae_http_requests_total", route="/v1/sample", status="200")
    client.get("/v1/sample", params={"n": 2})
    client.get("/v1/sample", params={"n": 0})
    assert metric(client, "vae_http_requests_total", route="/v1/sample", status="200") == before + 1
    assert metric(client, "vae_http_requests_total", route="/v1/sample", status="422") >= 1
    assert (
        metric(client, "vae_http_request_duration_seconds_count", route="/v1/sample", status="200")
        >= 1
    )
    assert metric(client, "vae_inference_duration_seconds_count", operation="sample") >= 1
    assert metric(client, "vae_model_info", version="1", source="repository") == 1
    assert metric(client, "vae_model_ready") == 1
    assert metric(client, "vae_model_reloads_total", result="success") == 1
    assert metric(client, "vae_http_requests_in_flight") == 1  # the /metrics request itself
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")


def test_unmatched_paths_share_one_metrics_label(client: TestClient) -> None:
    client.get("/v1/a-path-that-does-not-exist")
    assert metric(client, "vae_http_requests_total", route="unmatched", status="404") >= 1


def test_every_response_carries_the_model_version(client: TestClient) -> None:
    responses = [
        client.get("/metrics"),
        client.get("/openapi.json"),
        client.get("/docs"),
        client.get("/nowhere"),
        client.post("/v1/decode", json={"z": [[0.0] * 8]}),
        client.post("/v1/reconstruct", content=b"bad", headers={"content-type": "image/png"}),
    ]
    assert all(r.headers["x-model-version"] == "1" for r in responses)


def test_openapi_declares_every_operation_with_examples_and_problems(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "Problem" in spec["components"]["schemas"]
    for method, path in OPERATIONS:
        operation = spec["paths"][path][method]
        assert operation.get("description") or operation.get("summary"), path
        assert _has_example(spec, operation), f"{method} {path} has no example"
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")):
                assert list(response["content"]) == ["application/problem+json"], (path, status)
    reconstruct = spec["paths"]["/v1/reconstruct"]["post"]
    assert {"image/png", "multipart/form-data"} <= set(reconstruct["requestBody"]["content"])
    assert {"413", "415", "422", "503"} <= set(reconstruct["responses"])
    assert {"image/png", "application/json"} <= set(reconstruct["responses"]["200"]["content"])
    n = next(p for p in spec["paths"]["/v1/sample"]["get"]["parameters"] if p["name"] == "n")
    assert n["schema"]["maximum"] == 256 and n["schema"]["minimum"] == 1
    mode = next(p for p in reconstruct["parameters"] if p["name"] == "mode")
    assert mode["schema"]["enum"] == ["mean", "sample"]
    assert client.get("/docs").status_code == 200


def test_openapi_declares_the_served_latent_size(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/v1/decode", "/v1/interpolate"):
        schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        items = schema["properties"]["z"]["items"]
        assert items["minItems"] == items["maxItems"] == 8, path
        example = schema["examples"][0]
        assert client.post(path, json=example).status_code == 200, path


def _has_example(spec: dict, operation: dict) -> bool:
    """An example on a parameter, the request body, or a 200 response (schemas resolved)."""
    schemas = spec["components"]["schemas"]

    def examples_in(node: object) -> bool:
        if isinstance(node, dict):
            if "examples" in node or "example" in node:
                return True
            ref = node.get("$ref")
            if isinstance(ref, str) and examples_in(schemas[ref.rsplit("/", 1)[-1]]):
                return True
            return any(examples_in(v) for k, v in node.items() if k != "$ref")
        return isinstance(node, list) and any(examples_in(v) for v in node)

    ok = operation["responses"].get("200", {})
    return (
        examples_in(operation.get("parameters"))
        or examples_in(operation.get("requestBody"))
        or examples_in(ok)
    )


@pytest.mark.parametrize("setup", ["only-version-corrupt", "empty-repository"])
def test_no_valid_model_is_503_problem_everywhere(
    setup: str, repo: Path, published: dict[str, Path], make_settings: Callable[..., Settings]
) -> None:
    if setup == "only-version-corrupt":
        install(repo, published["a"], 1, lambda d, m: (d / "decoder.onnx").write_bytes(b"junk"))
    settings = make_settings(fallback_to_embedded=False)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert (
            ready.status_code == 503 and ready.headers["content-type"] == "application/problem+json"
        )
        assert ready.headers["x-model-version"] == "none"
        assert "no valid model" in ready.json()["detail"]
        for response in (
            client.get("/v1/sample"),
            client.post(
                "/v1/reconstruct",
                content=samples.digit_png(),
                headers={"content-type": "image/png"},
            ),
            client.post("/v1/decode", json={"z": [[0.0] * 8]}),
        ):
            assert response.status_code == 503
            assert response.json()["type"].endswith("/model-unavailable")
            assert response.json()["detail"] == ready.json()["detail"]
        assert client.get("/healthz").status_code == 200
        models = client.get("/v1/models").json()
        assert models["ready"] is False and models["serving"] is None
        assert metric(client, "vae_model_ready") == 0


def test_embedded_default_serves_when_no_repository_is_configured(
    tmp_path: Path, published: dict[str, Path], make_settings: Callable[..., Settings]
) -> None:
    embedded = tmp_path / "embedded"
    install(embedded, published["b"], 1)
    settings = make_settings(model_repository=None, embedded_model_dir=embedded)
    with TestClient(create_app(settings)) as client:
        models = client.get("/v1/models").json()
        assert (
            models["serving"]["source"] == "embedded" and client.get("/readyz").status_code == 200
        )
        assert "embedded default model" in models["detail"]


def test_empty_string_repository_means_the_embedded_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_MODEL_REPOSITORY", "")
    assert Settings().model_repository is None


def test_the_page_is_served_at_root_when_present(
    tmp_path: Path, repo: Path, published: dict[str, Path], make_settings: Callable[..., Settings]
) -> None:
    install(repo, published["a"], 1)
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>vae</title>")
    with TestClient(create_app(make_settings(static_dir=static))) as client:
        page = client.get("/")
        assert page.status_code == 200 and "<title>vae</title>" in page.text
        assert client.get("/readyz").status_code == 200  # the API still wins over the mount
        missing = client.get("/missing.js")
        assert (
            missing.status_code == 404
            and missing.headers["content-type"] == "application/problem+json"
        )
