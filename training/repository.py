"""The model repository's layout, as the publisher and the quality gate read it.

MODEL_REPOSITORY/vae/<version>/{encoder.onnx, decoder.onnx, reconstruct.onnx, manifest.json};
the contract is docs/model-repository.md.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

MODEL_NAME = "vae"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "vae-mnist-manifest/1"


class RepositoryError(ValueError):
    """The repository cannot take a new version; the message says why."""


def complete_versions(repo_root: Path) -> dict[int, Path]:
    """Version number -> directory, for versions whose manifest exists."""
    model_dir = repo_root / MODEL_NAME
    if not model_dir.is_dir():
        return {}
    return {
        int(p.name): p for p in model_dir.iterdir() if p.name.isdigit() and (p / MANIFEST).is_file()
    }


def next_version(model_dir: Path) -> int:
    # Count incomplete directories too: a number is never reused.
    taken = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
    return max(taken, default=0) + 1


def read_manifest(version_dir: Path) -> dict[str, Any] | None:
    """The parsed manifest, or None when it cannot be read as a JSON object."""
    try:
        manifest = json.loads((version_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def check_repository(repo_root: Path, version: int | None = None) -> None:
    """Raise RepositoryError unless repo_root is a writable directory (created when
    missing) in which `version`, when given, is still free."""
    if version is not None and version < 0:
        raise RepositoryError(f"a version is a non-negative integer, got {version}")
    if repo_root.exists() and not repo_root.is_dir():
        raise RepositoryError(f"model repository {repo_root} is not a directory")
    model_dir = repo_root / MODEL_NAME
    if version is not None and (model_dir / str(version)).exists():
        raise RepositoryError(
            f"version {version} already exists in {model_dir}; pass another --version "
            "or none for the next free number"
        )
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=model_dir):
            pass
    except OSError as exc:
        raise RepositoryError(
            f"cannot publish into model repository {repo_root}: {exc.strerror or exc}"
        ) from None
