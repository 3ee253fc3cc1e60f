"""Debian's Docker Engine (the docker.io package: dockerd 20.10), started by the test itself.

Users build with Docker, not podman, so the container tests also build with the engine most
of them have. The daemon is private to the test: its data root, exec root (and so its own
containerd), pid file and socket live in a temporary directory (a tmpfs, like podman's
storage in harness.py), with no bridge network and no iptables rules: builds and containers
use the host network on 127.0.0.1. The client is Debian's /usr/bin/docker, with which BuildKit
works (the newer docker CLI on these machines has no buildx plugin and refuses BuildKit).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from tests.container import harness as h

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # Debian's client (docker.io), not the one earlier on PATH
PIDFILE = "dockerd.pid"
TOOLS = {DOCKERD: "apt-get install docker.io", DOCKER: "apt-get install docker.io"}


def missing_requirements() -> list[str]:
    """What the Docker test lacks here, each with how to get it (the podman test's too)."""
    missing = [f"{path} ({how})" for path, how in TOOLS.items() if not Path(path).exists()]
    if h.find_tool("debootstrap") is None:
        missing.append("debootstrap (apt-get install debootstrap)")
    if os.geteuid() != 0:
        missing.append("root (dockerd and debootstrap)")
    return missing


class Docker:
    """A private dockerd under `root`, and the docker client pointed at it."""

    def __init__(self, root: Path, runner: h.Runner) -> None:
        self.root = root
        self.runner = runner
        self.socket = root / "docker.sock"
        self.env = {
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_BUILDKIT": "1",
            "DOCKER_CONFIG": str(root / "client"),  # no credentials or settings of the host's
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log: BinaryIO | None = None  # dockerd's output, closed by close()

    def __call__(
        self, *args: str | Path, timeout: float = 60, check: bool = True, legacy: bool = False
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "DOCKER_BUILDKIT": "0"} if legacy else self.env
        return self.runner.run([DOCKER, *args], timeout=timeout, check=check, env=env)

    def start(self, timeout: float = 60) -> str:
        """Start dockerd and wait for it to answer; return the engine's version."""
        self.log = log = (self.root / "dockerd.log").open("wb")
        self.process = subprocess.Popen(
            [
                *(DOCKERD, "--data-root", self.root / "data", "--exec-root", self.root / "exec"),
                *("--host", self.env["DOCKER_HOST"], "--pidfile", self.root / PIDFILE),
                *("--bridge=none", "--iptables=false", "--ip-masq=false"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.runner.log(f"# dockerd started, pid {self.process.pid}, log {log.name}")

        def version() -> str | None:
            if self.process is not None and self.process.poll() is not None:
                raise h.CommandError(f"dockerd exited: {self.log_tail()}")
            proc = self("version", "--format", "{{.Server.Version}}", check=False, timeout=10)
            return proc.stdout.strip() if proc.returncode == 0 else None

        return h.wait_for("dockerd", version, timeout=timeout)[0]

    def log_tail(self, size: int = 3000) -> str:
        return (self.root / "dockerd.log").read_text(errors="replace")[-size:]

    def build_base_image(self, workdir: Path) -> dict[str, Any]:
        """The stand-in for python:3.11-slim (harness.py), imported and built by this engine."""
        started = time.monotonic()
        tarball, cached = h.rootfs_tarball(self.runner, workdir)
        self("import", tarball, h.DEBIAN_IMAGE, timeout=300)
        context = h.standin_context(workdir / "docker")
        self(
            *("build", "--network=host", "--build-arg", f"BASE={h.DEBIAN_IMAGE}"),
            *("--file", h.STANDIN_FILE, "--tag", h.BASE_IMAGE, context),
            timeout=300,
        )
        return {"rootfs_cached": cached, "seconds": round(time.monotonic() - started, 1)}

    def build_target(
        self, target: str, tag: str, *extra: str, legacy: bool = False, timeout: float = 900
    ) -> tuple[float, str]:
        """`docker build --target TARGET` of the product's Dockerfile: (seconds, its output)."""
        started = time.monotonic()
        proc = self(
            *("build", "--network=host", "--target", target, "--tag", tag, *extra),
            *("--file", h.DOCKERFILE, h.REPO),
            timeout=timeout,
            legacy=legacy,
        )
        return round(time.monotonic() - started, 1), proc.stdout + proc.stderr

    def close(self) -> list[str]:
        """Remove every container, stop dockerd (and its containerd), remove the directory."""
        problems = []
        if self.process is not None and self.process.poll() is None:
            ids = self("ps", "--all", "--quiet", check=False).stdout.split()
            if ids:
                self("rm", "--force", *ids, check=False, timeout=120)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                problems.append("dockerd did not stop within 60 s of SIGTERM: killed")
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.close()
            self.runner.log(f"# the end of dockerd's log:\n{self.log_tail()}")
        remove_root(self.root, self.runner)
        if self.root.exists():
            problems.append(f"could not remove {self.root}")
        return problems


def remove_root(root: Path, runner: h.Runner) -> None:
    """Unmount what is mounted under `root` (the tmpfs itself last) and delete it."""
    for mount in reversed(h.mounts_under(root)):
        subprocess.run(["umount", "--lazy", mount], check=False, timeout=30)
    shutil.rmtree(root, ignore_errors=True)
    runner.log(f"# removed {root}")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve `directory` over HTTP on 127.0.0.1 (a free port) while the block runs: how a
    BuildKit build on the host network reaches the local torch wheel (`--find-links URL`)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
