"""Test helpers: publish and corrupt model versions, wait with a deadline, read metrics."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import httpx
import numpy as np
import onnx
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from onnx import numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from service.http.transport import GuardedHttpToolsProtocol
from service.main import server_config
from service.model.repository import ModelRepository, Rejection, VersionEntry
from service.settings import Settings
from training.density import DensityFit, fit_density, posterior_means
from training.model import VAE

Edit = Callable[[Path, dict[str, Any]], None]
DENSITY_IMAGES = 400


def fitted_density(model: VAE) -> DensityFit:
    """A latent density of `model`'s codes of random binary images, labelled 0-9 in turn:
    a mixture of 3 components and one Gaussian per digit, as the training job fits them."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy((rng.random((DENSITY_IMAGES, 784)) > 0.7).astype(np.float32))
    codes = posterior_means(model, x)
    labels = np.arange(DENSITY_IMAGES) % 10
    return fit_density(codes, labels, codes[:100], candidates=(3,))


def write_density(version_dir: Path, manifest: dict[str, Any], data: bytes) -> None:
    """Give the version `data` as its density file, with the right checksum."""
    (version_dir / "density.npz").write_bytes(data)
    manifest["density"] = {"file": "density.npz", "sha256": hashlib.sha256(data).hexdigest()}


def npz_bytes(arrays: dict[str, Any], *, compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def install(
    repo: Path,
    source: Path,
    version: int,
    edit: Callable[[Path, dict[str, Any]], None] | None = None,
) -> Path:
    """Publish a copy of `source` as `repo/vae/<version>` the way the exporter does: staged in
    a dot-directory, manifest rewritten, then renamed into place atomically."""
    staging = repo / "vae" / f".staging-{uuid.uuid4().hex}"
    shutil.copytree(source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"] = version
    if edit is not None:
        edit(staging, manifest)
    (staging / "manifest.json").write_text(json.dumps(manifest))
    target = repo / "vae" / str(version)
    staging.rename(target)
    return target


def reject_v2(
    repo: Path, published: dict[str, Path], edit: Edit
) -> tuple[ModelRepository, list[VersionEntry], Rejection]:
    """Install model a as version 1 and model b, edited, as version 2, then load the best:
    version 2 must be rejected and version 1 served. Returns the repository, its scan and the
    rejection."""
    install(repo, published["a"], 1)
    install(repo, published["b"], 2, edit)
    repository = ModelRepository(repo, "repository", threads=1)
    entries = repository.scan()
    runtime, rejections = repository.load_best(entries, above=0)
    assert runtime is not None and runtime.version == 1  # falls back to the next version down
    assert [r.version for r in rejections] == [2]
    return repository, entries, rejections[0]


def accepting(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def run_vae_serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m service.main` (what vae-serve runs) with `env`, to its exit."""
    return subprocess.run(
        [sys.executable, "-m", "service.main"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `condition` until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def versions(client: TestClient) -> dict[int, dict[str, Any]]:
    """GET /v1/models' versions by number (of one source: both have a version 0)."""
    return {v["version"]: v for v in client.get("/v1/models").json()["versions"]}


def polls(client: TestClient, count: int) -> None:
    """Wait until the app's watcher has polled `count` more times (each assigns a snapshot)."""
    holder = client.app.state.services.holder
    for _ in range(count):
        before = holder.snapshot
        wait_for(lambda b=before: holder.snapshot is not b, timeout=30, what="a repository poll")


def metric(client: TestClient, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def rehash(version_dir: Path, manifest: dict[str, Any], graph: str) -> None:
    data = (version_dir / f"{graph}.onnx").read_bytes()
    manifest["graphs"][graph]["sha256"] = hashlib.sha256(data).hexdigest()


def truncate(graph: str, *, fix_sha: bool) -> Edit:
    def edit(version_dir: Path, manifest: dict[str, Any]) -> None:
        path = version_dir / f"{graph}.onnx"
        path.write_bytes(path.read_bytes()[:1000])
        if fix_sha:
            rehash(version_dir, manifest, graph)

    return edit


def set_sha(version_dir: Path, manifest: dict[str, Any]) -> None:
    manifest["graphs"]["decoder"]["sha256"] = "0" * 64


def without_fused_graph(version_dir: Path, manifest: dict[str, Any]) -> None:
    """A version as published before the fused graph: no graphs.reconstruct, no file."""
    (version_dir / manifest["graphs"].pop("reconstruct")["file"]).unlink()


def fused_graph_of(other: Path) -> Edit:
    """Replace the version's reconstruct.onnx by `other` version's (its sha256 updated)."""

    def edit(version_dir: Path, manifest: dict[str, Any]) -> None:
        shutil.copyfile(other / "reconstruct.onnx", version_dir / "reconstruct.onnx")
        rehash(version_dir, manifest, "reconstruct")

    return edit


def claim_latent(size: int, *, shapes_too: bool) -> Edit:
    """Say the latent size is `size` (and, optionally, declare graph shapes to match)."""

    def edit(version_dir: Path, manifest: dict[str, Any]) -> None:
        manifest["latent_dim"] = size
        if shapes_too:
            graphs = manifest["graphs"]
            graphs["encoder"]["outputs"] = {"mu": ["batch", size], "logvar": ["batch", size]}
            graphs["decoder"]["inputs"] = {"z": ["batch", size]}
            if "reconstruct" in graphs:
                outputs = graphs["reconstruct"]["outputs"]
                outputs.update(mu=["batch", size], logvar=["batch", size])

    return edit


def edit_onnx(graph: str, change: Callable[[onnx.ModelProto], None]) -> Edit:
    def edit(version_dir: Path, manifest: dict[str, Any]) -> None:
        path = version_dir / f"{graph}.onnx"
        model = onnx.load(path)
        change(model)
        onnx.save(model, path)
        rehash(version_dir, manifest, graph)

    return edit


def poison_weights(model: onnx.ModelProto) -> None:
    """Every float initializer becomes NaN: the graph loads, the smoke inference is not finite."""
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 1:
            init.CopyFrom(numpy_helper.from_array(np.full_like(array, np.nan), init.name))


def rename_output(old: str, new: str) -> Callable[[onnx.ModelProto], None]:
    def change(model: onnx.ModelProto) -> None:
        for node in model.graph.node:
            node.output[:] = [new if name == old else name for name in node.output]
        for output in model.graph.output:
            if output.name == old:
                output.name = new

    return change


def set_field(key: str, value: Any) -> Edit:
    def edit(version_dir: Path, manifest: dict[str, Any]) -> None:
        manifest[key] = value

    return edit


def remove(name: str) -> Edit:
    def edit(version_dir: Path, manifest: dict[str, Any]) -> None:
        (version_dir / name).unlink()

    return edit


class ThreadLoad:
    """`threads` threads running `self.run(index)` until stopped: a context manager that
    starts them on entry and stops and joins them on exit."""

    def __init__(self, threads: int) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(threads)]

    def run(self, index: int) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[int]:
    """uvicorn, configured as `vae-serve` configures it, in a thread; yields the port."""
    config = server_config(settings)
    assert config.loop == "uvloop"
    assert config.http is GuardedHttpToolsProtocol
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        wait_for(lambda: server.started, what="uvicorn to start")
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


async def concurrently(
    app: Any, requests: list[tuple[str, bytes, str]], headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    """POST every (path, body, content type) at once to the app, its lifespan running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            posts = [
                client.post(path, content=body, headers={"content-type": kind, **(headers or {})})
                for path, body, kind in requests
            ]
            return await asyncio.gather(*posts)


def batched_sizes(app: Any) -> tuple[float, float]:
    """(batches run, requests they served) from the app's metrics."""
    text = app.services.metrics.exposition().decode()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("vae_inference_batch_size_")
    }
    return values["vae_inference_batch_size_count"], values["vae_inference_batch_size_sum"]
