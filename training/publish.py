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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch

from training.config import IMAGE_SHAPE, TrainConfig
from training.export import (
    OPSET,
    TOLERANCE,
    VERIFY_BATCH,
    export_onnx,
    graph_specs,
    verify_export,
)
from training.model import VAE

MODEL_NAME = "vae"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "vae-mnist-manifest/1"
GATE_TOLERANCE = 1.0  # nats of validation -ELBO a new model may lose before refusal

log = logging.getLogger(__name__)


class PublishRefusedError(RuntimeError):
    """The quality gate refused the new model (pass force=True to override)."""


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


def complete_versions(repo_root: Path) -> dict[int, Path]:
    """Version number -> directory, for versions whose manifest exists."""
    model_dir = repo_root / MODEL_NAME
    if not model_dir.is_dir():
        return {}
    return {
        int(p.name): p for p in model_dir.iterdir() if p.name.isdigit() and (p / MANIFEST).is_file()
    }


def _next_version(model_dir: Path) -> int:
    # Count incomplete directories too: a number is never reused.
    taken = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
    return max(taken, default=0) + 1


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


def quality_gate(
    repo_root: Path, evaluation: dict[str, Any] | None, tolerance: float, force: bool
) -> str:
    """Compare against the newest published version; raise PublishRefusedError if worse."""
    versions = complete_versions(repo_root)
    if not versions:
        return "first version in this repository: nothing to compare against"
    latest = max(versions)
    try:
        served = json.loads((versions[latest] / MANIFEST).read_text())["evaluation"]
        old = float(served["neg_elbo"])
        same_split = served.get("split") == (evaluation or {}).get("split")
    except (OSError, ValueError, KeyError, TypeError):
        return f"version {latest} has no readable validation -ELBO: not compared"
    if evaluation is None:
        return "no evaluation given for the new model: not compared"
    new = float(evaluation["neg_elbo"])
    verdict = f"new -ELBO {new:.2f} vs version {latest}'s {old:.2f} (tolerance {tolerance:g})"
    if not same_split:
        return f"{verdict}, on different splits: not compared"
    if new <= old + tolerance:
        return f"passed: {verdict}"
    if force:
        return f"worse but forced: {verdict}"
    raise PublishRefusedError(f"refused: {verdict}; pass --force to publish anyway")


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
    graphs = {}
    for name, spec in graph_specs(model.latent_dim).items():
        path = staging / spec.file
        graphs[name] = {
            "file": spec.file,
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "inputs": spec.inputs,
            "outputs": spec.outputs,
        }
    return {
        "format": MANIFEST_FORMAT,
        "name": MODEL_NAME,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "latent_dim": model.latent_dim,
        "image_shape": list(IMAGE_SHAPE),
        "opset": OPSET,
        "graphs": graphs,
        "preprocessing": {"binarize_threshold": cfg.threshold},
        "training": cfg.to_dict(),
        "run": run_info,
        "data": data_info,
        "evaluation": evaluation,
        "software": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
        "git_commit": git_commit(),
        "export_check": {
            "max_abs_diff": export_diff,
            "tolerance": TOLERANCE,
            "batch": VERIFY_BATCH,
        },
    }


def publish_version(
    repo_root: Path,
    model: VAE,
    cfg: TrainConfig,
    *,
    evaluation: dict[str, Any] | None = None,
    data_info: dict[str, Any] | None = None,
    force: bool = False,
    tolerance: float = GATE_TOLERANCE,
    run_info: dict[str, Any] | None = None,
    version: int | None = None,
) -> PublishResult:
    """Export, verify and publish `model` as `repo_root/vae/<next version>/`.

    The quality gate compares `evaluation["neg_elbo"]` with the newest complete version's;
    a model worse by more than `tolerance` nats is refused unless `force`. `run_info`
    (wall time, iterations) is recorded in the manifest as it is. `version` overrides the
    next free number (the embedded default model is version 0); it must not exist yet.
    """
    if version is not None and version < 0:
        raise ValueError(f"a version is a non-negative integer, got {version}")
    model_dir = repo_root / MODEL_NAME
    model_dir.mkdir(parents=True, exist_ok=True)
    gate = quality_gate(repo_root, evaluation, tolerance, force)
    staging = model_dir / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        export_onnx(model, staging)
        diff = verify_export(model, staging)
        for spec in graph_specs(model.latent_dim).values():
            _fsync_path(staging / spec.file)
        if version is None:
            version = _next_version(model_dir)
        elif (model_dir / str(version)).exists():
            raise ValueError(f"version {version} already exists in {model_dir}")
        manifest = build_manifest(
            version, staging, model, cfg, evaluation, data_info, diff, run_info
        )
        write_json_atomic(staging / MANIFEST, manifest)
        target = model_dir / str(version)
        staging.rename(target)  # atomic; fails if a concurrent publisher took `version`
        _fsync_path(model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("published version %d at %s (%s)", version, target, gate)
    return PublishResult(version=version, path=target, gate=gate)
