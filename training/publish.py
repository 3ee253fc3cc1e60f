"""Publish a model as the next version of a model repository, atomically.

Layout and manifest: docs/model-repository.md. The version is staged in a dot-directory
(ignored by the service), the manifest is written last, and the whole directory is renamed
into place, so a crash at any step never leaves a version that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch

from training.config import IMAGE_SHAPE, TrainConfig
from training.density import DENSITY_FILE, DensityFit
from training.export import (
    OPSET,
    TOLERANCE,
    VERIFY_BATCH,
    export_onnx,
    graph_specs,
    verify_export,
)
from training.gate import EMBEDDED_MODEL, GATE_TOLERANCE, PublishRefusedError, Rescore, judge
from training.model import VAE
from training.repository import (
    MANIFEST,
    MANIFEST_FORMAT,
    MODEL_NAME,
    RepositoryError,
    check_repository,
    complete_versions,
    next_version,
)

log = logging.getLogger(__name__)

SOFTWARE = {
    "torch": torch.__version__,
    "onnx": onnx.__version__,
    "onnxruntime": onnxruntime.__version__,
    "python": platform.python_version(),
}


@dataclass(frozen=True)
class PublishResult:
    version: int
    path: Path
    gate: str  # what the quality gate decided, in words


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write to a temporary name, fsync, rename over `path`, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    _fsync_path(path.parent)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _graphs(staging: Path, latent_dim: int) -> dict[str, dict[str, Any]]:
    """Each exported graph's manifest entry: file, checksum, size and tensor shapes."""
    graphs = {}
    for name, spec in graph_specs(latent_dim).items():
        path = staging / spec.file
        graphs[name] = {
            "file": spec.file,
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "inputs": spec.inputs,
            "outputs": spec.outputs,
        }
    return graphs


def build_manifest(
    version: int,
    staging: Path,
    model: VAE,
    cfg: TrainConfig,
    evaluation: dict[str, Any] | None,
    data_info: dict[str, Any] | None,
    export_diff: float,
    run_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "name": MODEL_NAME,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "latent_dim": model.latent_dim,
        "image_shape": list(IMAGE_SHAPE),
        "opset": OPSET,
        "graphs": _graphs(staging, model.latent_dim),
        "density": None,  # the density file's entry, once written (publish_version)
        "preprocessing": {"binarize_threshold": cfg.threshold},
        "training": cfg.to_dict(),
        "run": run_info,
        "data": data_info,
        "evaluation": evaluation,
        "software": SOFTWARE,
        "git_commit": git_commit(),
        "export_check": {
            "max_abs_diff": export_diff,
            "tolerance": TOLERANCE,
            "batch": VERIFY_BATCH,
        },
    }


@contextmanager
def _staging(model_dir: Path) -> Iterator[Path]:
    """A dot-directory (ignored by the service) to build a version in; removed on failure."""
    staging = model_dir / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _target(model_dir: Path, version: int | None) -> Path:
    """vae/<version>, or vae/<next free number>; never an existing directory."""
    if version is None:
        return model_dir / str(next_version(model_dir))
    if (model_dir / str(version)).exists():
        raise RepositoryError(f"version {version} already exists in {model_dir}")
    return model_dir / str(version)


def _export_verified(model: VAE, staging: Path) -> float:
    """Export into staging, check onnxruntime against torch, make the files durable."""
    export_onnx(model, staging)
    diff = verify_export(model, staging)
    for spec in graph_specs(model.latent_dim).values():
        _fsync_path(staging / spec.file)
    return diff


def write_density(directory: Path, density: DensityFit) -> dict[str, Any]:
    """Write the density file durably into `directory`; its manifest entry."""
    path = directory / DENSITY_FILE
    path.write_bytes(density.to_bytes())
    _fsync_path(path)
    return {**density.summary, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def publish_version(
    repo_root: Path,
    model: VAE,
    cfg: TrainConfig,
    *,
    evaluation: dict[str, Any] | None = None,
    data_info: dict[str, Any] | None = None,
    force: bool = False,
    tolerance: float = GATE_TOLERANCE,
    rescore: Rescore | None = None,
    embedded: Path = EMBEDDED_MODEL,
    run_info: dict[str, Any] | None = None,
    version: int | None = None,
    density: Callable[[], DensityFit] | None = None,
) -> PublishResult:
    """Publish `model` as repo_root/vae/<next or given version>/, with the latent density that
    `density()` fits once the quality gate (training.gate.judge, given the keywords of the
    same names) has passed it."""
    check_repository(repo_root, version)
    gate = judge(
        repo_root,
        evaluation,
        data_info,
        tolerance=tolerance,
        force=force,
        rescore=rescore,
        embedded=embedded,
    )
    model_dir = repo_root / MODEL_NAME
    with _staging(model_dir) as staging:
        diff = _export_verified(model, staging)
        target = _target(model_dir, version)
        manifest = build_manifest(
            int(target.name), staging, model, cfg, evaluation, data_info, diff, run_info
        )
        manifest["density"] = write_density(staging, density()) if density else None
        write_json_atomic(staging / MANIFEST, manifest)
        staging.rename(target)  # atomic; fails if a concurrent publisher took the version
        _fsync_path(model_dir)
    log.info("published version %s at %s (%s)", target.name, target, gate)
    return PublishResult(version=int(target.name), path=target, gate=gate)


__all__ = ["PublishRefusedError", "complete_versions", "publish_version"]
