"""A model that gives NaN is never served with it: validation runs each graph on inputs across
the API's range, and a served version that still gives a non-finite output is withdrawn, the
request that met it gets a 503 naming the version, and the previous version serves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bench.soak import SEED_MODEL
from service.http.app import create_app
from service.settings import Settings
from tests.reliability.broken_graphs import (
    any_abs_over,
    first_equals,
    nan_where,
    scaled,
    sum_equals,
)
from tests.service import service_samples as samples
from tests.service.service_helpers import edit_onnx, install, metric, polls, versions, wait_for

JSON = {"accept": "application/json"}
MAGIC_Z = 123.25  # no probe of validation hits it; POST /v1/decode can send it
MAGIC_INK = 37  # pixels of ink: no probe of validation has exactly that many


# A graph, where it gives NaN, and the probe of validation that must find it.
CAUGHT_AT_VALIDATION = {
    "decoder-nan-past-z-5": ("decoder", any_abs_over(5.0), "z from the prior at temperature 10"),
    "decoder-nan-near-decode-bound": ("decoder", any_abs_over(999.0), "corners of |z_i| <= 1000"),
    "encoder-nan-on-all-ink": ("encoder", sum_equals(784.0), "an all-ink image (all 1)"),
    "fused-nan-on-blank": ("reconstruct", sum_equals(0.0), "a blank image (all 0)"),
}


@pytest.mark.parametrize("case", list(CAUGHT_AT_VALIDATION))
def test_a_graph_that_gives_nan_within_the_api_range_is_rejected_at_validation(
    case: str, seed_repo: Path, seed_settings: Settings
) -> None:
    graph, condition, probe = CAUGHT_AT_VALIDATION[case]
    install(seed_repo, SEED_MODEL, 2, edit_onnx(graph, nan_where(condition)))
    with TestClient(create_app(seed_settings)) as client:
        assert client.get("/readyz").json()["model_version"] == "1"
        v2 = versions(client)[2]
        assert v2["status"] == "rejected"
        assert f"the {graph} graph's" in v2["reason"] and "not finite" in v2["reason"]
        assert probe in v2["reason"], v2["reason"]
        sample = client.get("/v1/sample?n=64&temperature=10&seed=1", headers=JSON)
        assert sample.status_code == 200 and sample.json()["model_version"] == 1
        assert np.all(np.isfinite(np.array(sample.json()["probs"], dtype=np.float64)))


def test_a_version_that_gives_nan_while_serving_is_withdrawn_and_the_previous_serves(
    seed_repo: Path, seed_settings: Settings
) -> None:
    """POST /v1/decode of one z runs inline on the event loop."""
    install(seed_repo, SEED_MODEL, 2, edit_onnx("decoder", nan_where(first_equals(MAGIC_Z))))
    z = {"z": [[MAGIC_Z] + [0.0] * 63]}
    with TestClient(create_app(seed_settings)) as client:
        assert client.get("/readyz").json()["model_version"] == "2"  # validation cannot see it
        ordinary = client.post("/v1/decode", json={"z": [[0.5] * 64]}, headers=JSON)
        assert ordinary.status_code == 200 and ordinary.json()["model_version"] == 2

        broken = client.post("/v1/decode", json=z, headers=JSON)
        assert broken.status_code == 503, broken.text
        assert broken.headers["content-type"] == "application/problem+json"
        assert broken.headers["retry-after"] == "1" and broken.headers["x-model-version"] == "2"
        assert broken.json()["detail"] == (
            "model version 2 produced non-finite output and was withdrawn; retry"
        )
        wait_for(lambda: client.get("/readyz").json()["model_version"] == "1", what="version 1")
        again = client.post("/v1/decode", json=z, headers=JSON)
        assert again.status_code == 200 and again.json()["model_version"] == 1
        assert np.all(np.isfinite(np.array(again.json()["probs"], dtype=np.float64)))

        reason = versions(client)[2]["reason"]
        assert versions(client)[2]["status"] == "rejected"
        assert reason.startswith("withdrawn at 20") and "the decoder graph's probs" in reason
        assert metric(client, "vae_model_withdrawals_total") == 1
        polls(client, 3)  # not loaded again while its files are the same
        assert client.get("/readyz").json()["model_version"] == "1"

        # Republished in place (new files, new fingerprint): validated again, and served.
        manifest = seed_repo / "vae" / "2" / "manifest.json"
        manifest.write_text(json.dumps(json.loads(manifest.read_text()), indent=1))
        wait_for(lambda: client.get("/readyz").json()["model_version"] == "2", what="version 2")


def test_a_nan_met_on_the_inference_thread_withdraws_the_version(
    seed_repo: Path, seed_settings: Settings
) -> None:
    """A 28x28 reconstruct runs on the inference thread (the micro-batcher): the withdrawal
    is reported from that thread and carried out on the event loop."""
    install(seed_repo, SEED_MODEL, 2, edit_onnx("reconstruct", nan_where(sum_equals(MAGIC_INK))))
    ink = np.zeros(784, np.uint8)
    ink[np.random.default_rng(0).choice(784, MAGIC_INK, replace=False)] = 255
    image = samples.gray_array_png(ink.reshape(28, 28))
    headers = {"content-type": "image/png", **JSON}
    url = "/v1/reconstruct?preprocess=none"
    with TestClient(create_app(seed_settings)) as client:
        assert client.get("/readyz").json()["model_version"] == "2"
        assert client.app.state.services.executor.batcher.running
        broken = client.post(url, content=image, headers=headers)
        assert broken.status_code == 503 and "model version 2" in broken.json()["detail"]
        wait_for(lambda: client.get("/readyz").json()["model_version"] == "1", what="version 1")
        again = client.post(url, content=image, headers=headers)
        assert again.status_code == 200 and again.json()["model_version"] == 1
        assert "the reconstruct graph's mu" in versions(client)[2]["reason"]


def test_finite_outputs_too_large_to_square_are_served(
    seed_repo: Path, seed_settings: Settings
) -> None:
    """Huge is not broken: logits of 1e30 and more are finite, and a check that summed or
    squared them (overflowing float32) would withdraw a model that works."""
    install(seed_repo, SEED_MODEL, 2, edit_onnx("decoder", scaled("logits", 1e30)))
    with TestClient(create_app(seed_settings)) as client:
        assert client.get("/readyz").json()["model_version"] == "2"
        runtime = client.app.state.services.holder.snapshot.runtime
        logits, _ = runtime.decode_logits(np.full((1, 64), 0.5, np.float32))
        assert np.isfinite(logits).all() and np.abs(logits).max() > 1e20
        decoded = client.post("/v1/decode", json={"z": [[0.5] * 64]}, headers=JSON)
        assert decoded.status_code == 200 and decoded.json()["model_version"] == 2
        polls(client, 2)
        assert client.get("/readyz").json()["model_version"] == "2"
