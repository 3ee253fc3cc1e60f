"""Live reload with requests flowing: a new version swaps in atomically; bad ones are refused."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.settings import Settings
from tests.service.service_helpers import (
    ThreadLoad,
    claim_latent,
    install,
    metric,
    set_sha,
    truncate,
    versions,
    wait_for,
)

Z = {"z": [[0.3] * 8]}
JSON_ACCEPT = {"accept": "application/json"}


class Traffic(ThreadLoad):
    """Threads posting /v1/decode until stopped, recording (status, header, body version, probs)."""

    def __init__(self, client: TestClient, threads: int = 3) -> None:
        self.client = client
        self.results: list[tuple[int, str, int | None, bytes]] = []
        super().__init__(threads)

    def run(self, index: int) -> None:
        while not self.stop.is_set():
            response = self.client.post("/v1/decode", json=Z, headers=JSON_ACCEPT)
            body = response.json()
            probs = np.array(body.get("probs", []), dtype=np.float32).tobytes()
            self.results.append(
                (
                    response.status_code,
                    response.headers["x-model-version"],
                    body.get("model_version"),
                    probs,
                )
            )

    def more(self, count: int) -> None:
        """Wait until `count` more requests have completed."""
        target = len(self.results) + count
        wait_for(lambda: len(self.results) >= target, what=f"{count} more requests")


def withdraw(repo: Path, version: int) -> None:
    """Remove a version atomically (renamed to a dot-directory first), as an operator should."""
    path = repo / "vae" / str(version)
    if path.exists():
        trash = path.with_name(f".withdrawn-{version}")
        path.rename(trash)
        shutil.rmtree(trash)


@pytest.fixture
def served(repo: Path, published: dict[str, Path], make_settings: Callable[..., Settings]):
    install(repo, published["a"], 1)
    with TestClient(create_app(make_settings())) as client:
        yield client


def test_publish_v2_while_requests_flow_then_refuse_corrupt_v3(
    served: TestClient, repo: Path, published: dict[str, Path]
) -> None:
    with Traffic(served) as traffic:
        traffic.more(20)
        install(repo, published["b"], 2)
        wait_for(lambda: traffic.results[-1][1] == "2", what="X-Model-Version 2")
        traffic.more(20)
        failures = metric(served, "vae_model_reloads_total", result="failure")
        corruptions = {
            "truncated ONNX": (truncate("encoder", fix_sha=False), "sha256 is"),
            "wrong sha256": (set_sha, "manifest says 0000"),
            "wrong latent size": (claim_latent(16, shapes_too=True), "['batch', 16]"),
        }
        for name, (edit, reason) in corruptions.items():
            withdraw(repo, 3)
            install(repo, published["b"], 3, edit)

            def rejected(reason: str = reason) -> bool:
                v3 = versions(served).get(3, {})
                return v3.get("status") == "rejected" and reason in (v3.get("reason") or "")

            wait_for(rejected, what=f"v3 ({name}) to be rejected")
            traffic.more(10)
            assert served.get("/readyz").json()["model_version"] == "2", name
        assert metric(served, "vae_model_reloads_total", result="failure") == failures + 3
        assert metric(served, "vae_model_reloads_total", result="success") == 2
    statuses = [status for status, *_ in traffic.results]
    assert statuses.count(200) == len(statuses), "a request failed during the swap"
    headers = [header for _, header, _, _ in traffic.results]
    assert headers[0] == "1" and headers[-1] == "2"
    # Never a mix: each response's header, body version and pixels come from one model.
    expected = {}
    for _, header, body_version, probs in traffic.results:
        assert header == str(body_version)
        assert expected.setdefault(header, probs) == probs
    assert expected["1"] != expected["2"]
    report = versions(served)
    assert report[2]["status"] == "serving" and report[1]["status"] == "available"
    assert served.get("/v1/models").json()["serving"]["version"] == 2


def test_a_lower_or_incomplete_version_never_replaces_the_served_one(
    served: TestClient, repo: Path, published: dict[str, Path]
) -> None:
    install(repo, published["b"], 5)
    wait_for(lambda: served.get("/readyz").json()["model_version"] == "5", what="v5")
    install(repo, published["a"], 4)  # published late, but lower
    (repo / "vae" / "9").mkdir()  # in progress: no manifest yet
    wait_for(lambda: versions(served).get(9, {}).get("status") == "incomplete", what="v9 seen")
    assert served.get("/readyz").json()["model_version"] == "5"
    assert versions(served)[4]["status"] == "unvalidated"  # never examined: v5 was served first


def test_the_served_model_survives_its_directory_being_removed(
    served: TestClient, repo: Path
) -> None:
    shutil.rmtree(repo / "vae" / "1")
    wait_for(
        lambda: (
            1
            not in {
                v["version"]
                for v in served.get("/v1/models").json()["versions"]
                if v["status"] != "serving"
            }
        ),
        what="a poll",
    )
    response = served.post("/v1/decode", json=Z)
    assert response.status_code == 200 and response.headers["x-model-version"] == "1"
    assert versions(served)[1]["status"] == "serving"


def test_fixing_a_rejected_version_in_place_gets_it_served(
    served: TestClient, repo: Path, published: dict[str, Path]
) -> None:
    install(repo, published["b"], 2, set_sha)
    wait_for(lambda: versions(served).get(2, {}).get("status") == "rejected", what="v2 rejected")
    withdraw(repo, 2)
    install(repo, published["b"], 2)
    wait_for(lambda: served.get("/readyz").json()["model_version"] == "2", what="v2 served")
