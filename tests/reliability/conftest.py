"""Fixtures: a model repository serving the shipped default model, as a real deployment would."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import SEED_MODEL
from service.settings import Settings
from tests.service.service_helpers import install


@pytest.fixture
def seed_repo(tmp_path: Path) -> Path:
    """A repository whose version 1 is the shipped default model."""
    root = tmp_path / "repo"
    (root / "vae").mkdir(parents=True)
    install(root, SEED_MODEL, 1)
    return root


@pytest.fixture
def seed_settings(seed_repo: Path, tmp_path: Path) -> Settings:
    """Settings serving `seed_repo` alone (no embedded fallback), polled every 50 ms."""
    return Settings(
        model_repository=seed_repo,
        fallback_to_embedded=False,
        static_dir=tmp_path / "no-static",
        poll_interval_s=0.05,
    )
