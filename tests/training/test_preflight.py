"""What can be checked before training is checked before training: one line, exit 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.cli_args import train_args
from training.cli import main
from training.config import TrainConfig
from training.data import DataSource
from training.pipeline import RunOptions, run

ROOT = Path(__file__).resolve().parents[2]


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def test_a_repository_that_is_a_file(
    tmp_path: Path, mnist_dir: tuple[Path, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    data, _ = mnist_dir
    (tmp_path / "models").write_text("not a directory")
    code = main(train_args(data, tmp_path))
    assert code == 2
    assert errors(caplog) == [f"model repository {tmp_path / 'models'} is not a directory"]
    assert not (tmp_path / "run").exists(), "training started"


def test_a_version_that_exists(
    tmp_path: Path, mnist_dir: tuple[Path, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    data, _ = mnist_dir
    (tmp_path / "models" / "vae" / "3").mkdir(parents=True)
    code = main(train_args(data, tmp_path, "--version", "3"))
    assert code == 2 and "version 3 already exists" in " ".join(errors(caplog))
    assert not (tmp_path / "run").exists(), "training started"


def test_a_library_run_checks_eval_k_first(tmp_path: Path) -> None:
    opts = RunOptions(
        DataSource(tmp_path / "no-data", download=False),
        tmp_path / "run",
        repository=None,
        eval_k=0,
    )
    with pytest.raises(ValueError, match="--eval-k must be >= 1, got 0"):
        run(TrainConfig.from_preset("tiny"), opts)  # before the (missing) data is looked for


def _read_only(repo: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the CLI with `repo` on a read-only filesystem (a mount namespace of its own as
    root, where permissions would not stop a write; a read-only mode otherwise)."""
    command = [sys.executable, "-m", "training", *argv]
    if os.geteuid() == 0:
        unshare = shutil.which("unshare")
        if unshare is None:
            pytest.skip("needs unshare (util-linux) to make a read-only filesystem as root")
        script = 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"'
        command = [unshare, "--mount", "sh", "-c", script, str(repo), *command]
    else:
        repo.chmod(0o555)
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )


def test_a_read_only_repository(tmp_path: Path, mnist_dir: tuple[Path, dict[str, str]]) -> None:
    data, _ = mnist_dir
    repo = tmp_path / "models"
    repo.mkdir()
    proc = _read_only(repo, train_args(data, tmp_path))
    assert proc.returncode == 2, proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert "Traceback" not in proc.stderr
    assert f"cannot publish into model repository {repo}: " in error
    assert "Read-only file system" in error or "Permission denied" in error
    assert not (tmp_path / "run").exists(), "training started"
