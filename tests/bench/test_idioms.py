"""Every speed idiom in service/ still gives what its plain form gives.

bench/idioms.py times each idiom against the plain code it departs from (docs/benchmarks.md,
"Speed idioms"), and before timing a case it checks that both forms give the same result: a
change that makes an idiom diverge from its plain form ends the script with the case's name.
Run here with the shortest samples, on the embedded model; the timings are not looked at.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_every_idiom_matches_its_plain_form(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "MNIST_DIR": str(tmp_path)}  # the drawn digit, not ../shared
    run = subprocess.run(
        [sys.executable, str(BENCH / "idioms.py"), "--repeats", "1", "--sample-ms", "0.1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) > 20, run.stdout  # the header and one row per case
    assert any("hand-written PNG encoder" in row for row in rows)
