"""A server's process tree from /proc: its processes, their CPU time and memory, and ending
the ones a server left behind. Linux only, as the benchmarks are."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree(root: int) -> list[int]:
    """`root` and every live descendant, from the parent ids in /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def end(pids: list[int], grace_s: float = 15.0) -> None:
    """SIGTERM the processes among `pids` that are still alive, SIGKILL them after `grace_s`."""
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        alive = [pid for pid in pids if _signal(pid, signal_number)]
        deadline = time.perf_counter() + grace_s
        while alive and time.perf_counter() < deadline:
            time.sleep(0.1)
            alive = [pid for pid in alive if _signal(pid, 0)]
        if not alive:
            return


def _signal(pid: int, signal_number: int) -> bool:
    """Send a signal; False when the process is gone (or only a zombie is left)."""
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
        os.kill(pid, signal_number)
    except (OSError, IndexError):
        return False
    return True


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # exited since the tree was read
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else 0.0  # a zombie has no VmRSS
