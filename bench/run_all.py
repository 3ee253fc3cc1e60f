"""Run every benchmark in turn and print their tables (what `make bench` runs).

    python bench/run_all.py [--quick] [--skip train_speed ...]

Serving benchmarks need wrk (Debian: `apt-get install wrk`; taskset too, for `--pin`), and
scale_speed nginx; the training one reads ../shared/data/mnist when present, and
sample_quality needs it. The full run takes about 32 minutes on 2 cores; `--quick` cuts
rounds and durations to a few minutes for a smoke check (its figures are too noisy to
record). Record figures in docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

FULL: dict[str, list[str]] = {
    "train_speed": ["--iterations", "2000", "--trials", "5"],
    "model_speed": [],
    "http_speed": ["--fresh"],
    "scale_speed": [],
    "threading_model": [],
    "gc_effect": [],
    "startup_memory": [],
    "idioms": [],
    "sample_quality": [],
}
QUICK: dict[str, list[str]] = {
    "train_speed": ["--iterations", "200", "--trials", "1"],
    "model_speed": ["--repeats", "3", "--calls", "200"],
    "http_speed": ["--rounds", "1", "--duration", "1", "--connections", "16"],
    "scale_speed": ["--rounds", "1", "--duration", "1"],
    "threading_model": ["--rounds", "1", "--duration", "1", "--variants", "inline", "batcher:32:0"],
    "gc_effect": ["--rounds", "1", "--duration", "1"],
    "startup_memory": ["--starts", "2", "--requests", "5000"],
    "idioms": ["--repeats", "5"],
    "sample_quality": ["--samples", "200", "--per-digit", "50"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, not for the record")
    parser.add_argument("--skip", nargs="*", default=[], choices=list(FULL))
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    failed = []
    for name, extra in plan.items():
        if name in args.skip:
            continue
        command = [sys.executable, str(HERE / f"{name}.py"), *extra]
        print(f"\n## {name}: {' '.join(command[1:])}\n", flush=True)
        start = time.perf_counter()
        if subprocess.run(command, check=False).returncode != 0:
            failed.append(name)
        print(f"\n({name}: {time.perf_counter() - start:.0f} s)", flush=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
