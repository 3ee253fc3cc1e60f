"""Memory and CPU of the serve container, idle and under load: the figures behind the
Kubernetes Deployment's requests and limits (deploy/kubernetes/base/api-deployment.yaml).

    python bench/pod_memory.py [--duration 20] [--connections 16]

Builds the serve image with the container test's harness (private podman storage, the
stand-in base image: needs root, podman, runc, debootstrap; see docs/containers.md), runs it
as the pod runs it (read-only root, a /tmp tmpfs, no capabilities, host network on a free
127.0.0.1 port), and reads the container's main process (vae-serve is PID 1 inside it) from
/proc on the host: VmRSS idle after ready, then VmRSS and CPU during wrk runs of the
heaviest requests the API allows by default, and VmHWM (the peak RSS) at the end.
Run it under `flock /tmp/vae-containers.lock`.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness import CLOCK_TICKS, Request, Wrk, digit_png, machine, multipart

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.container import harness as h  # noqa: E402  (the repository root is on sys.path now)

IMAGE = "localhost/vae-mnist-bench:serve"


@dataclass
class Container:
    """The running container's main process, as the bench harness's Wrk reads a server."""

    pid: int
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status_kb(self, field: str) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
        assert match is not None, field
        return int(match.group(1))

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def loads() -> list[Request]:
    """The heaviest requests of the default limits, and the common one."""
    png = digit_png()
    batch, content_type = multipart([png] * 64)
    return [
        Request("reconstruct 1 image", "/v1/reconstruct", png),
        Request("reconstruct 64 images (multipart)", "/v1/reconstruct", batch, content_type),
        Request("sample n=256", "/v1/sample?n=256&seed=1", None, method="GET"),
        Request("score 8 images k=1000", "/v1/score?k=1000", *multipart([png] * 8)),
    ]


def start(podman: h.Podman) -> Container:
    port = h.free_port()
    podman(
        *("run", "-d", "--name", "vae-bench", "--network=host", "--read-only"),
        *("--tmpfs", "/tmp", "--cap-drop=ALL", "--security-opt=no-new-privileges"),
        *("-e", "VAE_HOST=127.0.0.1", "-e", f"VAE_PORT={port}", "-e", "VAE_LOG_LEVEL=warning"),
        IMAGE,
    )
    url = f"http://127.0.0.1:{port}/readyz"
    h.wait_for("/readyz", lambda: h.http("GET", url).status == 200 or None, timeout=60)
    pid = int(podman("inspect", "--format", "{{.State.Pid}}", "vae-bench").stdout)
    return Container(pid, port)


def measure(container: Container, duration: int, connections: int) -> list[str]:
    time.sleep(2)
    rows = [f"| idle after ready | {container.status_kb('VmRSS') / 1024:.1f} | | |"]
    wrk = Wrk(None)
    try:
        for request in loads():
            cpu = container.cpu_seconds()
            t0 = time.monotonic()
            result = wrk.run(container, request, connections, duration)  # type: ignore[arg-type]
            cores = (container.cpu_seconds() - cpu) / (time.monotonic() - t0)
            rss = container.status_kb("VmRSS") / 1024
            rows.append(
                f"| {request.name}, c={connections} | {rss:.1f} | {cores:.2f} "
                f"| {result.rps:.0f} req/s, p99 {result.p99_ms:.1f} ms, {result.errors} errors |"
            )
    finally:
        wrk.close()
    rows.append(f"| peak (VmHWM) over the run | {container.status_kb('VmHWM') / 1024:.1f} | | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=20, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    runner = h.Runner(ROOT / "test-artifacts" / "bench-pod-memory.log")
    root = h.make_root(runner)
    podman = h.Podman(root, runner)
    try:
        h.build_base_image(podman, root)
        h.build_target(podman, "serve", IMAGE)
        rows = measure(start(podman), args.duration, args.connections)
    finally:
        problems = podman.close()
    print(machine())
    print("| state | RSS, MiB | CPU, cores | load |\n| --- | --- | --- | --- |")
    print("\n".join(rows))
    if problems:
        sys.exit(f"clean-up: {problems}")


if __name__ == "__main__":
    main()
