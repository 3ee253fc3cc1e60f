"""After a hot swap, once the last request on the old model is done, its memory goes back to
the OS (service.memory): without it RSS creeps up by about a model per swap until it plateaus."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bench.soak import SEED_MODEL
from service.http.app import create_app
from service.model import memory, watcher
from service.settings import Settings
from tests.service.service_helpers import install, wait_for


def polled(client: TestClient, times: int) -> None:
    """Wait for `times` polls (keeping no snapshot, which would keep its model alive)."""
    holder = client.app.state.services.holder
    for _ in range(times):
        before = holder.snapshot
        wait_for(lambda b=before: holder.snapshot is not b, what="a poll")


def test_release_freed_memory_works_on_this_c_library() -> None:
    assert memory.release_freed_memory()  # glibc, as in the container and CI


def test_the_poll_after_a_swapped_out_model_is_freed_releases_memory(
    seed_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    releases: list[bool] = []
    monkeypatch.setattr(
        watcher, "release_freed_memory", lambda: releases.append(memory.release_freed_memory())
    )
    settings = Settings(
        model_repository=seed_repo, static_dir=tmp_path / "none", poll_interval_s=0.05
    )
    with TestClient(create_app(settings)) as client:
        polled(client, times=3)  # polls without a swap release nothing
        assert releases == []
        install(seed_repo, SEED_MODEL, 2)
        wait_for(lambda: client.get("/readyz").json()["model_version"] == "2", what="v2")
        gc.collect()  # the old runtime is garbage once no request holds it
        wait_for(lambda: releases == [True], what="the freed model's memory released")
