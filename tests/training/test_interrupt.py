"""SIGINT and SIGTERM: the step finishes, a checkpoint is written, the resume command is given."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.mnist_files import synthetic_digits
from training.config import TrainConfig
from training.data import binarize
from training.interrupt import Interrupted
from training.train import train

ROOT = Path(__file__).resolve().parents[2]
CFG = TrainConfig.from_preset("tiny", iterations=200, log_every=5, eval_every=50)


def signal_when(metrics: Path, iteration: int, signum: int) -> threading.Thread:
    """Send `signum` to this process once metrics.jsonl has reached `iteration`."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            if lines and json.loads(lines[-1])["iteration"] >= iteration:
                os.kill(os.getpid(), signum)
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_checkpoints_the_step_and_the_resumed_run_matches(
    tmp_path: Path, signum: signal.Signals
) -> None:
    x = binarize(synthetic_digits(600, seed=3)[0], 0.5)
    train_x, val_x = x[:500], x[500:]
    whole = train(CFG, train_x, val_x, tmp_path / "whole", progress=False).model
    run_dir = tmp_path / "stopped"
    handler = signal.getsignal(signum)
    signal_when(run_dir / "metrics.jsonl", 20, signum)
    with pytest.raises(Interrupted) as stop:
        train(CFG, train_x, val_x, run_dir, progress=False)
    stopped_at = stop.value.iteration
    assert stop.value.signum == signum and 20 <= stopped_at < CFG.iterations
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["iteration"] == stopped_at  # not the last periodic checkpoint: this step's
    assert signal.getsignal(signum) == handler  # restored after the loop
    resumed = train(CFG, train_x, val_x, run_dir, progress=False, resume=True).model
    assert torch.equal(params(whole), params(resumed))


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "training", *argv],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _stop_after_progress(proc: subprocess.Popen[bytes], log: Path, signum: int) -> str:
    """Wait for a progress line in the log, send `signum`, return the whole log."""
    try:
        deadline = time.monotonic() + 120
        while "training: it " not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no progress line in 120 s"
            time.sleep(0.05)
        proc.send_signal(signum)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return log.read_text()


def test_the_cli_exits_cleanly_and_prints_the_command_that_resumes(
    tmp_path: Path, mnist_dir: tuple[Path, dict[str, str]]
) -> None:
    data, _ = mnist_dir
    run_dir = tmp_path / "run"
    argv = [
        "train",
        "--preset",
        "tiny",
        "--iterations",
        "1000000",
        "--no-progress",
        "--log-seconds",
        "0.1",
        "--allow-unverified-data",
        "--no-download",
        "--data-dir",
        str(data),
        "--no-publish",
        "--run-dir",
        str(run_dir),
    ]
    proc = _start(argv, tmp_path / "first.log")
    text = _stop_after_progress(proc, tmp_path / "first.log", signal.SIGINT)
    assert proc.returncode == 130 and "Traceback" not in text, text
    first = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["iteration"]
    assert f"stopped by SIGINT: checkpoint written at iteration {first}; resume with: " in text
    command = shlex.split(text.split("resume with: ")[1].splitlines()[0])
    assert command == ["vae-train", *argv[:-2], "--run-dir", str(run_dir), "--resume"]

    proc = _start(command[1:], tmp_path / "second.log")  # the command it printed, resumed
    text = _stop_after_progress(proc, tmp_path / "second.log", signal.SIGTERM)
    assert proc.returncode == 143 and "Traceback" not in text, text
    assert f"resumed from {run_dir / 'checkpoints' / 'last.pt'} at iteration {first}" in text
    second = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["iteration"]
    assert second > first
