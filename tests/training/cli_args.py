"""The `vae-train` command lines the tests run: the tiny preset on synthetic data."""

from __future__ import annotations

from pathlib import Path

# Thirty iterations of the tiny preset, k=5, on files that are not the standard MNIST.
TINY = [
    "--preset",
    "tiny",
    "--iterations",
    "30",
    "--eval-k",
    "5",
    "--no-progress",
    "--allow-unverified-data",
    "--no-download",
]


def train_args(data: Path, tmp: Path, *extra: str) -> list[str]:
    """`train` on `data` with its run directory tmp/run, publishing into tmp/models."""
    where = ["--model-repository", str(tmp / "models"), "--run-dir", str(tmp / "run")]
    return ["train", *TINY, "--data-dir", str(data), *where, *extra]
