"""Fixtures: tiny seeded models published once per session, copied into per-test repositories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.settings import Settings
from tests.service.service_helpers import fitted_density, install
from training.config import TrainConfig
from training.model import VAE
from training.publish import publish_version

POLL_S = 0.05  # the test poll interval: reloads are waited for with a deadline, never a sleep


@pytest.fixture(scope="session")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Version directories of two tiny models (seeds 0 and 1), exported once per session, and
    "fitted": model a again, with a latent density fitted to its codes of random images."""
    root = tmp_path_factory.mktemp("published")
    paths = {}
    models = {}
    for name, seed in (("a", 0), ("b", 1)):
        cfg = TrainConfig.from_preset("tiny", seed=seed)
        torch.manual_seed(seed)
        models[name] = VAE(cfg)
        paths[name] = publish_version(root / name, models[name], cfg, force=True).path
    cfg = TrainConfig.from_preset("tiny", seed=0)
    density = fitted_density(models["a"])
    paths["fitted"] = publish_version(
        root / "fitted", models["a"], cfg, force=True, density=lambda: density
    ).path
    return paths


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """An empty model repository root."""
    root = tmp_path / "repo"
    (root / "vae").mkdir(parents=True)
    return root


@pytest.fixture
def make_settings(tmp_path: Path, repo: Path) -> Callable[..., Settings]:
    """Settings for tests: the temp repository, no embedded model, no page, fast polling."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model_repository": repo,
            "embedded_model_dir": tmp_path / "no-embedded-model",
            "static_dir": tmp_path / "no-static",
            "poll_interval_s": POLL_S,
        }
        return Settings(**{**values, **overrides})

    return make


@pytest.fixture
def client(
    repo: Path, published: dict[str, Path], make_settings: Callable[..., Settings]
) -> Iterator[TestClient]:
    """The real app, lifespan running, serving model 'a' as version 1."""
    install(repo, published["a"], 1)
    with TestClient(create_app(make_settings())) as test_client:
        yield test_client
