"""The run directory: one run per directory, never overwritten by accident.

A directory that holds a previous run's files is refused unless the run resumes it or
overwrites it (which removes only the files a run writes). The default directory is new
for every run.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

RUNS = Path("runs")
CHECKPOINT = Path("checkpoints") / "last.pt"
# What a run writes into its directory; --overwrite removes these and nothing else.
RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    "summary.json",
    "loss_curves.png",
    "latents.png",
    "checkpoints",
    "images",
    "export",
)


class RunDirError(ValueError):
    """The run directory cannot be used as asked; the message says what to pass."""


def default_run_dir(preset: str, dry_run: bool = False, now: datetime | None = None) -> Path:
    """runs/<preset>[-dry-run]-<date>-<time>, with -2, -3, ... if that is taken."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    base = RUNS / f"{preset}{'-dry-run' if dry_run else ''}-{stamp}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def previous_run(run_dir: Path) -> list[str]:
    """The names of a previous run's files in run_dir."""
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Raise RunDirError unless run_dir can take this run; changes nothing."""
    if resume and overwrite:
        raise RunDirError("--resume continues a run and --overwrite replaces it: pass one")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} is a file")
    if resume:
        if not (run_dir / CHECKPOINT).is_file():
            raise RunDirError(f"nothing to resume: no checkpoint at {run_dir / CHECKPOINT}")
    elif (found := previous_run(run_dir)) and not overwrite:
        raise RunDirError(
            f"run directory {run_dir} holds a previous run ({', '.join(found)}); "
            "pass --resume to continue it or --overwrite to replace it"
        )


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Check run_dir, remove a previous run's files when overwriting, and create it."""
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    if overwrite:
        for name in previous_run(run_dir):
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
