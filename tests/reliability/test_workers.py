"""VAE_WORKERS: several server processes on one port (`python -m service.main`, as vae-serve),
each with its own model, watcher and in-flight limit, supervised by uvicorn."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from bench.soak import publish
from tests.reliability.server import Server, held, request, running
from tests.service import service_samples as samples
from tests.service.service_helpers import accepting, wait_for

WORKERS = 2
DIGIT = samples.digit_png()


def answers(port: int, connections: int = 8) -> list[tuple[str, str]]:
    """(X-Served-By, X-Model-Version) of `connections` requests sent at once on new
    connections (so that the workers accept some each)."""
    replies: list[tuple[str, str]] = []

    def ask() -> None:
        _, headers, _ = request(port, "GET", "/v1/models")
        replies.append((headers["x-served-by"], headers["x-model-version"]))

    threads = [threading.Thread(target=ask) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return replies


def workers_seen(server: Server, count: int, version: str | None = None) -> set[str]:
    """The workers (host/pid) seen answering, each seen on `version` if given, until `count`."""
    seen: dict[str, str] = {}

    def enough() -> bool:
        seen.update(answers(server.port))
        return len([w for w, v in seen.items() if version in (None, v)]) >= count

    wait_for(enough, timeout=60, what=f"{count} workers answering")
    return {w for w, v in seen.items() if version in (None, v)}


def pid(worker: str) -> int:
    return int(worker.rsplit("/", 1)[1])


def test_workers_share_the_port_each_swap_and_a_dead_one_is_replaced(
    seed_repo: Path, tmp_path: Path
) -> None:
    with running(seed_repo, tmp_path, workers=WORKERS, poll_interval_s=0.2) as server:
        first = workers_seen(server, WORKERS)
        assert len({pid(w) for w in first}) == WORKERS and server.process.pid not in map(pid, first)
        publish(seed_repo, 2)  # every worker watches the repository itself
        assert workers_seen(server, WORKERS, version="2")
        victim = sorted(first)[0]
        os.kill(pid(victim), signal.SIGKILL)
        # The supervisor starts a replacement, which loads the newest version itself.
        replacements = workers_seen(server, WORKERS, version="2") - first
        assert replacements, "no new worker answered after one was killed"
        assert victim not in workers_seen(server, WORKERS, version="2")


def test_sigterm_lets_every_worker_finish_what_it_accepted(seed_repo: Path, tmp_path: Path) -> None:
    with running(seed_repo, tmp_path, workers=WORKERS, graceful_shutdown_s=10) as server:
        workers_seen(server, WORKERS)
        pending = [
            held(server.port, "POST", "/v1/reconstruct", DIGIT, "image/png") for _ in range(6)
        ]
        time.sleep(0.5)  # every worker has read what it accepted
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: not accepting(server.port), timeout=20, what="the port to close")
        replies = [p.finish() for p in pending]
        assert [status for status, _ in replies] == [200] * 6
        assert server.process.wait(timeout=30) == 0


def test_workers_end_with_their_supervisor(seed_repo: Path, tmp_path: Path) -> None:
    """Killed outright (an out-of-memory kill), the supervisor leaves no orphans serving."""
    with running(seed_repo, tmp_path, workers=WORKERS) as server:
        pids = {pid(w) for w in workers_seen(server, WORKERS)}
        server.process.kill()
        server.process.wait(timeout=30)
        wait_for(lambda: not any(_alive(p) for p in pids), timeout=30, what="the workers to end")
        assert not accepting(server.port)


def _alive(process: int) -> bool:
    try:
        os.kill(process, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
