"""The API writes nothing: every operation is a GET or a POST that only computes, and models
arrive only through the repository."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.settings import STATIC_DIR, Settings
from tests.service import service_samples as samples

COMPUTE_ONLY = {
    "/v1/reconstruct",
    "/v1/encode",
    "/v1/score",
    "/v1/decode",
    "/v1/interpolate",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
}
WRITE_METHODS = ("PUT", "PATCH", "DELETE", "POST")
# Paths outside the OpenAPI document: the page, its files, Swagger UI, and guesses at an
# upload or admin route.
UNDOCUMENTED = (
    "/",
    "/index.html",
    "/docs",
    "/docs/assets/swagger-ui.css",
    "/openapi.json",
    "/v1/models/1",
    "/v1/models/vae/versions/2",
    "/v1/upload",
    "/admin",
)


@pytest.fixture
def client(seed_repo: Path) -> Iterator[TestClient]:
    """The app as deployed: the page and the docs served too."""
    settings = Settings(model_repository=seed_repo, static_dir=STATIC_DIR, poll_interval_s=0.05)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root`: size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_every_operation_is_a_get_or_a_compute_only_post(client: TestClient) -> None:
    operations = {
        (method.upper(), path)
        for path, item in client.get("/openapi.json").json()["paths"].items()
        for method in item
    }
    assert {method for method, _ in operations} <= {"GET", "POST"}
    assert {path for method, path in operations if method == "POST"} == COMPUTE_ONLY


def test_no_path_takes_a_write_method(client: TestClient) -> None:
    documented = client.get("/openapi.json").json()["paths"]
    for path in (*documented, *UNDOCUMENTED):
        for method in WRITE_METHODS:
            if method == "POST" and path in COMPUTE_ONLY:
                continue
            status = client.request(method, path, content=b"x").status_code
            assert status in (404, 405), (method, path, status)


def test_the_compute_operations_leave_the_repository_and_the_page_untouched(
    client: TestClient, seed_repo: Path
) -> None:
    before = tree(seed_repo), tree(STATIC_DIR)
    png, batch = samples.digit_png(), samples.multipart([samples.digit_png()] * 2)
    z = json.dumps({"z": [[0.0] * 64, [0.5] * 64]})
    requests = [
        ("/v1/reconstruct", png, "image/png"),
        ("/v1/encode", png, "image/png"),
        ("/v1/score?k=10", batch[0], batch[1]),
        ("/v1/decode", z.encode(), "application/json"),
        ("/v1/interpolate", batch[0], batch[1]),
        ("/v1/interpolate", z.encode(), "application/json"),
    ]
    x = {"name": "x", "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784}
    for model in ("vae", "encoder"):
        requests.append((f"/v2/models/{model}/infer", json.dumps({"inputs": [x]}).encode(), ""))
    for path, body, content_type in requests:
        response = client.post(path, content=body, headers={"content-type": content_type})
        assert response.status_code == 200, (path, response.text)
    assert (tree(seed_repo), tree(STATIC_DIR)) == before
