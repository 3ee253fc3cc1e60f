"""Scanning and validating model repositories, and choosing what to serve, without HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.model.repository import ModelRepository
from service.model.watcher import NOT_LOADED, ModelSource
from service.settings import Settings
from tests.service.service_helpers import (
    claim_latent,
    edit_onnx,
    install,
    poison_weights,
    rehash,
    reject_v2,
    remove,
    rename_output,
    set_field,
    set_sha,
    truncate,
)

Edit = Callable[[Path, dict[str, Any]], None]


CORRUPTIONS = {
    "truncated-onnx": (truncate("encoder", fix_sha=False), "sha256 is"),
    "truncated-onnx-with-its-sha": (truncate("encoder", fix_sha=True), "onnxruntime cannot load"),
    "wrong-sha256": (set_sha, "manifest says 0000"),
    "wrong-latent-size": (claim_latent(16, shapes_too=True), "expected float32 ['batch', 16]"),
    "latent-size-disagrees-with-shapes": (claim_latent(16, shapes_too=False), "latent_dim=16"),
    "nan-weights": (edit_onnx("decoder", poison_weights), "not finite"),
    "renamed-output": (edit_onnx("encoder", rename_output("mu", "mean")), "encoder outputs are"),
    "missing-graph": (remove("decoder.onnx"), "cannot read"),
    "wrong-format": (set_field("format", "other/1"), "format must be"),
    "bad-image-shape": (set_field("image_shape", [28]), "image_shape must be"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_each_corruption_is_rejected_with_its_reason(
    corruption: str, repo: Path, published: dict[str, Path]
) -> None:
    edit, reason = CORRUPTIONS[corruption]
    repository, entries, rejection = reject_v2(repo, published, edit)
    assert reason in rejection.reason
    records = {r.version: r for r in repository.records(entries, serving=1)}
    assert records[2].status == "rejected" and records[2].reason == rejection.reason
    assert records[1].status == "serving"


def test_manifest_version_must_match_its_directory(repo: Path, published: dict[str, Path]) -> None:
    target = install(repo, published["a"], 3)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = 4
    (target / "manifest.json").write_text(json.dumps(manifest))
    runtime, rejections = ModelRepository(repo, "repository", 1).load_best(
        ModelRepository(repo, "repository", 1).scan(), 0
    )
    assert runtime is None and "does not match directory '3'" in rejections[0].reason


def test_unreadable_manifest_is_rejected(repo: Path, published: dict[str, Path]) -> None:
    target = install(repo, published["a"], 1)
    (target / "manifest.json").write_text("{not json")
    repository = ModelRepository(repo, "repository", 1)
    runtime, rejections = repository.load_best(repository.scan(), 0)
    assert runtime is None and "not readable JSON" in rejections[0].reason


def test_scan_ignores_non_versions_and_reports_incomplete(
    repo: Path, published: dict[str, Path]
) -> None:
    install(repo, published["a"], 2)
    (repo / "vae" / "7").mkdir()  # no manifest yet: a publish in progress
    (repo / "vae" / ".staging-abc").mkdir()
    (repo / "vae" / "latest").mkdir()
    (repo / "vae" / "README").write_text("not a version")
    repository = ModelRepository(repo, "repository", 1)
    entries = repository.scan()
    assert [(e.version, e.complete) for e in entries] == [(7, False), (2, True)]
    runtime, rejections = repository.load_best(entries, 0)
    assert runtime is not None and runtime.version == 2 and rejections == []
    statuses = [(r.version, r.status) for r in repository.records(entries, serving=2)]
    assert statuses == [(7, "incomplete"), (2, "serving")]


def test_missing_repository_scans_empty(tmp_path: Path) -> None:
    assert ModelRepository(tmp_path / "nothing", "repository", 1).scan() == []


def test_a_rejection_is_remembered_until_the_files_change(
    repo: Path, published: dict[str, Path]
) -> None:
    target = install(repo, published["a"], 1, set_sha)
    repository = ModelRepository(repo, "repository", 1)
    assert len(repository.load_best(repository.scan(), 0)[1]) == 1
    assert repository.load_best(repository.scan(), 0) == (None, [])  # not validated again
    rehash(target, manifest := json.loads((target / "manifest.json").read_text()), "decoder")
    (target / "manifest.json").write_text(json.dumps(manifest, indent=1))  # fixed in place
    runtime, rejections = repository.load_best(repository.scan(), 0)
    assert runtime is not None and rejections == []


def settings_for(repo: Path | None, embedded: Path, fallback: bool = True) -> Settings:
    return Settings(
        model_repository=repo, embedded_model_dir=embedded, fallback_to_embedded=fallback
    )


def test_source_serves_the_embedded_model_without_a_repository(
    tmp_path: Path, published: dict[str, Path]
) -> None:
    embedded = tmp_path / "embedded"
    install(embedded, published["a"], 1)
    snapshot = ModelSource(settings_for(None, embedded)).refresh(NOT_LOADED).snapshot
    assert snapshot.runtime is not None and snapshot.runtime.source == "embedded"
    assert "model repository is not configured" in snapshot.detail


@pytest.mark.parametrize("state", ["missing", "empty", "all-rejected"])
def test_source_falls_back_to_embedded_while_the_repository_has_nothing_valid(
    state: str, tmp_path: Path, published: dict[str, Path]
) -> None:
    embedded, root = tmp_path / "embedded", tmp_path / "repo"
    install(embedded, published["a"], 1)
    if state != "missing":
        (root / "vae").mkdir(parents=True)
    if state == "all-rejected":
        install(root, published["b"], 5, set_sha)
    source = ModelSource(settings_for(root, embedded))
    result = source.refresh(NOT_LOADED)
    assert result.snapshot.runtime is not None and result.snapshot.runtime.source == "embedded"
    assert "embedded default model" in result.snapshot.detail
    # ...and moves to the repository as soon as it has a valid version.
    install(root, published["b"], 6)
    later = source.refresh(result.snapshot)
    assert later.loaded is not None and later.snapshot.runtime is later.loaded
    assert (later.loaded.source, later.loaded.version) == ("repository", 6)


def test_source_with_nothing_valid_says_why(tmp_path: Path, published: dict[str, Path]) -> None:
    root = tmp_path / "repo"
    install(root, published["a"], 1, set_sha)
    result = ModelSource(settings_for(root, tmp_path / "none", fallback=False)).refresh(NOT_LOADED)
    assert result.snapshot.runtime is None
    assert "every version of the model repository was rejected" in result.snapshot.detail
    assert "embedded default model is disabled" in result.snapshot.detail
    assert [(r.version, r.status) for r in result.snapshot.versions] == [(1, "rejected")]
