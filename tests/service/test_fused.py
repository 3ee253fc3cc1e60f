"""The optional fused reconstruct graph: used for mode=mean when a version has it, never
required, and never served when it disagrees with the version's encoder and decoder."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import numpy_helper

from service.app import create_app
from service.latent import Array, reparameterize
from service.loader import load_runtime
from service.manifest import read_manifest
from service.offload import ModelJob, Pass, mean_latent, run_jobs, run_one
from service.runtime import ModelRuntime
from service.settings import Settings
from tests.service.service_helpers import (
    Edit,
    edit_onnx,
    fused_graph_of,
    install,
    reject_v2,
    remove,
    wait_for,
    without_fused_graph,
)
from tests.service.service_samples import PNG, digit_png, multipart

MATCH = 1e-5  # fused vs encoder + decoder


def load(version_dir: Path) -> ModelRuntime:
    return load_runtime(version_dir, read_manifest(version_dir), threads=1, source="repository")


@pytest.fixture(scope="module")
def runtimes(published: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Models a and b as published (with the fused graph), and a without it."""
    repo = tmp_path_factory.mktemp("fused")
    (repo / "vae").mkdir()
    plain = install(repo, published["a"], 1, without_fused_graph)
    return {"a": load(published["a"]), "b": load(published["b"]), "a-plain": load(plain)}


def images(count: int, seed: int) -> Array:
    return (np.random.default_rng(seed).random((count, 784)) > 0.7).astype(np.float32)


def test_the_fused_graph_is_loaded_only_when_the_version_has_one(runtimes: dict) -> None:
    assert runtimes["a"].fused is not None and runtimes["a"].manifest.reconstruct is not None
    assert runtimes["a-plain"].fused is None and runtimes["a-plain"].manifest.reconstruct is None


def test_reconstruct_mean_equals_encoder_then_decoder(runtimes: dict) -> None:
    fused, plain, x = runtimes["a"], runtimes["a-plain"], images(7, 0)
    mu, logvar = plain.encode(x)
    for ours, theirs in zip(fused.reconstruct_mean(x), (mu, logvar, plain.decode(mu)), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=MATCH, rtol=0)
    for ours, theirs in zip(
        fused.reconstruct(x, "mean"), plain.reconstruct(x, "mean"), strict=True
    ):
        np.testing.assert_allclose(ours, theirs, atol=MATCH, rtol=0)
    # Without the fused graph, reconstruct_mean is the two graphs themselves.
    for ours, theirs in zip(plain.reconstruct_mean(x), (mu, logvar, plain.decode(mu)), strict=True):
        assert np.array_equal(ours, theirs)


def job(runtime: ModelRuntime, x: Array, latent: Any) -> ModelJob[Pass]:
    return ModelJob(runtime, lambda: x, latent, lambda result: result)


def sampled(seed: int) -> Callable[[Array, Array], Array]:
    def latent(mu: Array, logvar: Array) -> Array:
        return reparameterize(mu, logvar, np.random.default_rng(seed))

    return latent


def test_which_graphs_a_group_of_jobs_runs(runtimes: dict) -> None:
    """Model a whose fused session is model b's (real sessions both): the probs then tell
    which graphs ran. Fused only when every decoding job of the group decodes mean_latent."""
    a = runtimes["a"]
    chimera = dataclasses.replace(a, fused=runtimes["b"].fused)
    x, other = images(1, 1), images(2, 2)
    b_mu, b_logvar, b_probs = runtimes["b"].reconstruct_mean(x)
    a_mu = a.encode(x)[0]
    a_probs = a.decode(a_mu)

    alone = run_one(job(chimera, x, mean_latent))
    assert alone.probs is not None and alone.z is not None
    assert np.array_equal(alone.probs, b_probs) and np.array_equal(alone.z, b_mu)
    assert np.array_equal(alone.mu, b_mu) and np.array_equal(alone.logvar, b_logvar)

    with_encode_only = run_jobs([job(chimera, x, mean_latent), job(chimera, other, None)])
    assert isinstance(with_encode_only[1], Pass) and with_encode_only[1].probs is None
    assert with_encode_only[1].z is None
    assert np.array_equal(with_encode_only[1].mu, runtimes["b"].encode(other)[0])

    two_graphs = [
        [job(chimera, x, mean_latent), job(chimera, other, sampled(3))],  # a sample in the group
        [job(chimera, x, lambda mu, logvar: mu)],  # mu, but not mean_latent
        [job(chimera, x, None)],  # nothing to decode: the encoder alone
        [job(dataclasses.replace(a, fused=None), x, mean_latent)],  # no fused graph
    ]
    for group in two_graphs:
        first = run_jobs(group)[0]
        assert isinstance(first, Pass) and np.array_equal(first.mu, a_mu)
        if first.probs is not None:
            assert np.array_equal(first.probs, a_probs)


def test_batched_fused_jobs_equal_jobs_run_alone(runtimes: dict) -> None:
    a = runtimes["a"]
    jobs = [
        job(a, images(1, 0), mean_latent),
        job(a, images(3, 1), mean_latent),
        job(a, images(1, 2), None),
        job(a, images(2, 3), mean_latent),
    ]
    together = run_jobs(jobs)
    for shared, single in zip(together, [run_one(j) for j in jobs], strict=True):
        assert isinstance(shared, Pass)
        for name in ("x", "mu", "logvar", "z", "probs"):
            got, want = getattr(shared, name), getattr(single, name)
            assert (got is None) == (want is None), name
            if want is not None:
                assert got.tobytes() == want.tobytes(), name  # bit for bit, as test_batcher


def foreign_fused(published: dict[str, Path]) -> Edit:
    return fused_graph_of(published["a"])  # installed over model b: another model's graph


def wrong_fused_sha(version_dir: Path, manifest: dict[str, Any]) -> None:
    manifest["graphs"]["reconstruct"]["sha256"] = "0" * 64


def undeclared_probs(version_dir: Path, manifest: dict[str, Any]) -> None:
    del manifest["graphs"]["reconstruct"]["outputs"]["probs"]


FUSED_CORRUPTIONS: dict[str, tuple[Callable[[dict[str, Path]], Edit], str]] = {
    "another-models-fused-graph": (
        foreign_fused,
        "reconstruct graph's mu differs from the encoder and decoder's",
    ),
    "missing-fused-graph": (lambda _: remove("reconstruct.onnx"), "reconstruct.onnx: cannot read"),
    "wrong-fused-sha256": (lambda _: wrong_fused_sha, "reconstruct.onnx: sha256 is"),
    "wrong-fused-signature": (lambda _: undeclared_probs, "graphs.reconstruct declares"),
}


@pytest.mark.parametrize("corruption", list(FUSED_CORRUPTIONS))
def test_a_bad_fused_graph_rejects_the_version(
    corruption: str, repo: Path, published: dict[str, Path]
) -> None:
    make_edit, reason = FUSED_CORRUPTIONS[corruption]
    _, _, rejection = reject_v2(repo, published, make_edit(published))
    assert reason in rejection.reason, rejection.reason


# Over HTTP, the real app and its lifespan.

JSON_PNG = {"content-type": PNG, "accept": "application/json"}


@pytest.fixture
def plain_client(
    repo: Path, published: dict[str, Path], make_settings: Callable[..., Settings]
) -> Iterator[TestClient]:
    """The app serving model a as version 1, published without the fused graph."""
    install(repo, published["a"], 1, without_fused_graph)
    with TestClient(create_app(make_settings())) as client:
        yield client


def served_version(client: TestClient) -> str:
    return str(client.get("/readyz").json()["model_version"])


def served_runtime(client: TestClient) -> ModelRuntime:
    runtime = client.app.services.holder.snapshot.runtime  # type: ignore[attr-defined]
    assert runtime is not None
    return runtime


def reconstruct(client: TestClient, version: str, **params: object) -> dict[str, Any]:
    response = client.post("/v1/reconstruct", content=digit_png(), headers=JSON_PNG, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == version
    body: dict[str, Any] = response.json()
    assert body["model_version"] == int(version)
    return body


def test_versions_with_and_without_the_fused_graph_answer_alike(
    plain_client: TestClient, repo: Path, published: dict[str, Path]
) -> None:
    client = plain_client
    assert served_version(client) == "1" and served_runtime(client).fused is None
    two_graphs = reconstruct(client, "1")
    sample = reconstruct(client, "1", mode="sample", seed=4)
    files, content_type = multipart([digit_png(), digit_png()])
    batch = client.post("/v1/reconstruct", content=files, headers={"content-type": content_type})
    assert batch.status_code == 200 and batch.headers["x-model-version"] == "1"

    install(repo, published["a"], 2)  # the same model, now with its fused graph
    wait_for(lambda: served_version(client) == "2", what="version 2 served")
    assert served_runtime(client).fused is not None
    assert "reconstruct" in client.get("/v1/models").json()["serving"]["manifest"]["graphs"]
    fused = reconstruct(client, "2")
    for key in ("z", "probs"):
        np.testing.assert_allclose(fused[key], two_graphs[key], atol=MATCH, rtol=0, err_msg=key)
    assert fused["inputs"] == two_graphs["inputs"]
    again = reconstruct(client, "2", mode="sample", seed=4)  # sample mode: the two graphs
    np.testing.assert_allclose(again["probs"], sample["probs"], atol=MATCH, rtol=0)


def nudge_last_layer(model: onnx.ModelProto) -> None:
    """The last layer's weight (the only initializer of 784 rows) times 1 + 1e-4: the probs
    move by 2.5e-5 |logits| at most, well within the smoke test's tolerance, but visibly."""
    (weight,) = [i for i in model.graph.initializer if i.dims and i.dims[0] == 784]
    nudged = numpy_helper.to_array(weight) * np.float32(1 + 1e-4)
    weight.CopyFrom(numpy_helper.from_array(nudged.astype(np.float32), weight.name))


def test_mean_reconstructs_through_the_route_take_the_fused_graph(
    plain_client: TestClient, repo: Path, published: dict[str, Path]
) -> None:
    """A fused graph a little off (within tolerance) is served, and shows in the answers of
    mode=mean, single or batched, but not of mode=sample."""
    client = plain_client
    two_graphs = reconstruct(client, "1")
    sample = reconstruct(client, "1", mode="sample", seed=4)
    install(repo, published["a"], 2, edit_onnx("reconstruct", nudge_last_layer))
    wait_for(lambda: served_version(client) == "2", what="version 2 served")
    runtime = served_runtime(client)
    x = np.array(two_graphs["inputs"], dtype=np.float32)
    fused_probs = runtime.reconstruct_mean(x)[2]
    assert not np.array_equal(fused_probs, runtime.decode(runtime.encode(x)[0]))
    single = np.array(reconstruct(client, "2")["probs"], dtype=np.float32)
    assert np.array_equal(single, fused_probs)
    np.testing.assert_allclose(single, two_graphs["probs"], atol=MATCH, rtol=0)
    files, content_type = multipart([digit_png(), digit_png()])
    headers = {"content-type": content_type, "accept": "application/json"}
    batch = client.post("/v1/reconstruct", content=files, headers=headers).json()["probs"]
    assert np.array_equal(np.array(batch, dtype=np.float32), np.vstack([fused_probs] * 2))
    assert reconstruct(client, "2", mode="sample", seed=4)["probs"] == sample["probs"]


def test_a_disagreeing_fused_graph_is_rejected_and_the_previous_model_keeps_serving(
    client: TestClient, repo: Path, published: dict[str, Path]
) -> None:
    before = reconstruct(client, "1")
    install(repo, published["a"], 2, fused_graph_of(published["b"]))

    def rejected() -> bool:
        versions = {v["version"]: v for v in client.get("/v1/models").json()["versions"]}
        return versions.get(2, {}).get("status") == "rejected"

    wait_for(rejected, what="version 2 rejected")
    versions = {v["version"]: v for v in client.get("/v1/models").json()["versions"]}
    assert "the reconstruct graph's mu differs" in versions[2]["reason"]
    assert served_version(client) == "1"
    assert reconstruct(client, "1")["probs"] == before["probs"]
