"""`vae-train` (also `python -m training`): train, evaluate, publish and fetch data.

vae-train train --preset compact --data-dir data/mnist --model-repository models
vae-train evaluate --model-repository models
vae-train publish --checkpoint runs/RUN/checkpoints/last.pt --model-repository models
vae-train download --data-dir data/mnist
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
from pathlib import Path

from training import arguments, commands
from training.checkpoint import CheckpointError
from training.data import DataError
from training.gate import PublishRefusedError
from training.interrupt import Interrupted, signals_as_interrupts
from training.repository import RepositoryError
from training.rundir import CHECKPOINT, RunDirError

log = logging.getLogger("training")

# A user's mistake or the world's (missing data, a full disk): one line, exit 2.
USER_ERRORS = (
    DataError,
    PublishRefusedError,
    RepositoryError,
    RunDirError,
    CheckpointError,
    ValueError,
    OSError,
)


def resume_command(argv: list[str], run_dir: Path) -> str:
    """The command line that continues an interrupted `train` in run_dir."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip or arg in ("--resume", "--overwrite") or arg.startswith("--run-dir="):
            skip = False
        elif arg == "--run-dir":
            skip = True
        else:
            kept.append(arg)
    return shlex.join(["vae-train", *kept, "--run-dir", str(run_dir), "--resume"])


def _stopped(args: argparse.Namespace, argv: list[str], signum: int, what: str) -> int:
    run_dir = getattr(args, "resolved_run_dir", None)
    if args.command == "train" and run_dir is not None and (run_dir / CHECKPOINT).is_file():
        what += f"; resume with: {resume_command(argv, run_dir)}"
    log.error("stopped by %s: %s", signal.Signals(signum).name, what)
    return 128 + signum


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = arguments.parser(__doc__).parse_args(argv)
    # Our own progress at INFO; the exporter's libraries only when something is wrong.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("training").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        with signals_as_interrupts():
            return commands.COMMANDS[args.command](args)
    except Interrupted as stop:
        return _stopped(
            args, argv, stop.signum, f"checkpoint written at iteration {stop.iteration}"
        )
    except KeyboardInterrupt as exc:
        return _stopped(args, argv, getattr(exc, "signum", signal.SIGINT), "interrupted")
    except USER_ERRORS as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
