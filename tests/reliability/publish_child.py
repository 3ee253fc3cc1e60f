"""Run the real `publish_version` and SIGKILL this process at one of its steps.

    python -m tests.reliability.publish_child REPO STEP SOURCE_VERSION_DIR

The model is the tiny preset with seed 0, whose graphs the parent exported once into
SOURCE_VERSION_DIR. Except at `encoder-written` (which runs the real export and dies after the
first graph), `export_onnx` is replaced by a copy of those graphs, to skip the 3-4 s that
torch.onnx.export takes per graph; everything else of `publish_version` is real, including
`verify_export`, which checks the copied graphs against this process's torch model. Nothing in
training/ has a test hook: the steps are reached by patching from here.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from training import export, publish
from training.config import TrainConfig
from training.model import VAE

STEPS = (
    "staging-created",  # the dot-directory exists, empty
    "encoder-written",  # encoder.onnx exported, decoder.onnx not yet
    "graphs-written",  # all three graphs written, not verified or fsynced yet
    "manifest-temp-written",  # .manifest.json.<uuid>.tmp written and fsynced, not renamed
    "manifest-in-place",  # manifest.json complete inside the dot-directory, not renamed
    "renamed",  # renamed to vae/<version>/, the directory fsync not done
)


def die(*_: object) -> Any:
    os.kill(os.getpid(), signal.SIGKILL)


def copied_export(source: Path) -> Callable[[VAE, Path], Any]:
    def export_onnx(model: VAE, out_dir: Path) -> Any:
        for spec in export.graph_specs(model.latent_dim).values():
            shutil.copyfile(source / spec.file, out_dir / spec.file)
        return export.graph_specs(model.latent_dim)

    return export_onnx


def die_on(method: str, when: Callable[[Path], bool]) -> None:
    """Make Path.<method> kill the process when called on a path for which `when` holds."""
    original = getattr(Path, method)

    def patched(self: Path, *args: Any) -> Any:
        if when(self):
            die()
        return original(self, *args)

    setattr(Path, method, patched)


def arm(step: str, source: Path) -> None:
    """Patch the publisher so that this process dies at `step`."""
    if step == "staging-created":
        publish.export_onnx = die
        return
    if step == "encoder-written":
        real = export._export_one
        export._export_one = lambda *args: (real(*args), die())  # the encoder comes first
        return
    publish.export_onnx = copied_export(source)
    if step == "graphs-written":
        publish.verify_export = die
    elif step == "manifest-temp-written":
        die_on("replace", lambda path: path.name.startswith(".manifest.json."))
    elif step == "manifest-in-place":
        die_on("rename", lambda path: path.name.startswith(".staging-"))
    elif step == "renamed":
        fsync_path = publish._fsync_path
        publish._fsync_path = lambda path: die() if path.name == "vae" else fsync_path(path)


def main() -> None:
    repo, step, source = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    if step not in STEPS:
        sys.exit(f"unknown step {step!r}; one of {', '.join(STEPS)}")
    cfg = TrainConfig.from_preset("tiny", seed=0)
    torch.manual_seed(0)
    model = VAE(cfg)
    arm(step, source)
    publish.publish_version(repo, model, cfg, force=True)
    sys.exit("publish_version returned: the kill point was never reached")


if __name__ == "__main__":
    main()
