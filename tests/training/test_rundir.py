"""Run directories are never overwritten by accident, and a resume needs a checkpoint."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import torch

from tests.mnist_files import synthetic_digits
from training.cli import main
from training.config import TrainConfig
from training.data import binarize
from training.rundir import RunDirError, default_run_dir
from training.train import train

CFG = TrainConfig.from_preset("tiny", iterations=20, eval_every=10, image_every=10)


def tensors() -> tuple[torch.Tensor, torch.Tensor]:
    x = binarize(synthetic_digits(600, seed=3)[0], 0.5)
    return x[:500], x[500:]


def test_a_previous_run_is_refused_and_overwrite_replaces_all_of_it(tmp_path: Path) -> None:
    train_x, val_x = tensors()
    train(CFG, train_x, val_x, tmp_path, progress=False)
    stale = tmp_path / "images" / "samples_999999.png"  # as from a longer earlier run
    stale.write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match=r"holds a previous run \(config.json, metrics.jsonl"):
        train(CFG, train_x, val_x, tmp_path, progress=False)
    assert stale.exists()
    train(CFG, train_x, val_x, tmp_path, progress=False, overwrite=True)
    assert not stale.exists() and (tmp_path / "images" / "samples_000020.png").is_file()
    assert (tmp_path / "notes.txt").read_text() == "mine"  # not a run's file: left alone


def test_resume_without_a_checkpoint_is_an_error(tmp_path: Path) -> None:
    train_x, val_x = tensors()
    with pytest.raises(RunDirError, match="nothing to resume: no checkpoint at"):
        train(CFG, train_x, val_x, tmp_path / "new", progress=False, resume=True)
    assert not (tmp_path / "new").exists()


def test_the_default_run_dir_is_new_for_every_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    now = datetime(2026, 12, 4, 16, 30, 5)
    first = default_run_dir("seed", now=now)
    assert first == Path("runs/seed-20261204-163005")
    first.mkdir(parents=True)
    assert default_run_dir("seed", now=now) == Path("runs/seed-20261204-163005-2")
    assert default_run_dir("tiny", dry_run=True, now=now) == Path(
        "runs/tiny-dry-run-20261204-163005"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--resume"], "--resume needs --run-dir"),
        (["--resume", "--run-dir", "{tmp}/empty"], "nothing to resume: no checkpoint at"),
        (["--run-dir", "{tmp}/previous"], "holds a previous run (config.json)"),
    ],
)
def test_the_cli_says_so_in_one_line_before_loading_anything(
    argv: list[str], message: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "previous").mkdir()
    (tmp_path / "previous" / "config.json").write_text("{}")
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    # No data directory at all: these are refused before the data is even looked for.
    code = main(
        [
            "train",
            "--preset",
            "tiny",
            "--data-dir",
            str(tmp_path / "no-data"),
            "--no-download",
            "--no-publish",
            *args,
        ]
    )
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
