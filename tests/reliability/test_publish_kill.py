"""A publish SIGKILLed at any of its steps leaves nothing the service would serve, and the next
publish succeeds with a fresh version; a running service watches the whole time."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.model.watcher import NOT_LOADED, ModelHolder, ModelSource
from service.settings import Settings
from tests.reliability.publish_child import STEPS
from tests.reliability.server import ROOT
from tests.service.service_helpers import install, wait_for
from training.config import TrainConfig
from training.model import VAE
from training.publish import publish_version

CHILD_TIMEOUT_S = 180  # importing torch (and one real export) on a loaded 2-core machine
# What the dead publisher leaves in its staging directory at each step.
LEFT_IN_STAGING = {
    "staging-created": set(),
    "encoder-written": {"encoder.onnx"},
    "graphs-written": {"encoder.onnx", "decoder.onnx", "reconstruct.onnx"},
    "manifest-temp-written": {
        "encoder.onnx",
        "decoder.onnx",
        "reconstruct.onnx",
        ".manifest.json.*.tmp",
    },
    "manifest-in-place": {"encoder.onnx", "decoder.onnx", "reconstruct.onnx", "manifest.json"},
}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny seed-0 model, exported and published for real once: the children copy it."""
    cfg = TrainConfig.from_preset("tiny", seed=0)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("source")
    return publish_version(root, VAE(cfg), cfg, force=True).path


@pytest.fixture
def watched(tmp_path: Path, source: Path) -> Iterator[tuple[Path, TestClient]]:
    """A repository serving version 1, and the service watching it (polling every 50 ms)."""
    repo = tmp_path / "repo"
    (repo / "vae").mkdir(parents=True)
    install(repo, source, 1)
    settings = Settings(
        model_repository=repo,
        fallback_to_embedded=False,
        static_dir=tmp_path / "no-static",
        poll_interval_s=0.05,
    )
    with TestClient(create_app(settings)) as client:
        yield repo, client


def kill_publisher_at(step: str, repo: Path, source: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-m", "tests.reliability.publish_child", str(repo), step, str(source)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    assert child.returncode == -signal.SIGKILL, (step, child.returncode, child.stderr[-2000:])


def polled_twice(holder: ModelHolder) -> None:
    """Wait until two whole scans have started and ended since now."""
    for _ in range(2):
        before = holder.snapshot
        wait_for(lambda b=before: holder.snapshot is not b, timeout=30, what="a repository poll")


def staged(repo: Path) -> dict[str, set[str]]:
    """Staging directories -> their files, with a temporary manifest's uuid as '*'."""
    return {
        path.name: {_pattern(f.name) for f in path.iterdir()}
        for path in (repo / "vae").glob(".staging-*")
    }


def _pattern(name: str) -> str:
    return ".manifest.json.*.tmp" if name.startswith(".manifest.json.") else name


def served(client: TestClient) -> int:
    return int(client.get("/readyz").json()["model_version"])


def test_a_publish_killed_at_any_step_is_never_served(
    watched: tuple[Path, TestClient], source: Path
) -> None:
    repo, client = watched
    services = client.app.state.services
    for step in STEPS:
        staged_before = staged(repo)
        kill_publisher_at(step, repo, source)
        polled_twice(services.holder)
        left = {k: v for k, v in staged(repo).items() if k not in staged_before}
        versions = {v["version"]: v["status"] for v in client.get("/v1/models").json()["versions"]}
        if step == "renamed":  # complete and valid: serving it is right
            assert not left and served(client) == 2 and versions == {1: "available", 2: "serving"}
        else:
            assert list(left.values()) == [LEFT_IN_STAGING[step]], (step, left)
            assert served(client) == 1 and versions == {1: "serving"}, (step, versions)
        # A service started now, from scratch, sees the same.
        fresh = ModelSource(services.settings).refresh(NOT_LOADED)
        assert fresh.snapshot.runtime is not None
        assert fresh.snapshot.runtime.version == served(client) and not fresh.rejections
    cfg = TrainConfig.from_preset("tiny", seed=1)
    torch.manual_seed(1)
    result = publish_version(repo, VAE(cfg), cfg, force=True)
    assert result.version == 3  # fresh: above every number taken, complete or not
    wait_for(lambda: served(client) == 3, timeout=30, what="the next publish to be served")
    assert len(staged(repo)) == len(STEPS) - 1  # the dead publishers' leftovers, all ignored
