"""Shared pieces of the serving benchmarks: start `vae-serve` (or any server: `spawn` and
`wait_ready`), drive it with wrk, read its process tree in /proc (bench/processes.py).

The server is the project's own serve path: the `vae-serve` console script of this
interpreter's environment (uvicorn, uvloop, httptools, one worker), on 127.0.0.1 with access
logging off (VAE_LOG_LEVEL=warning). The load generator is wrk (Debian: `apt-get install
wrk`), one thread. With `cpus`, the server and wrk are pinned to different cores by taskset
so that the client does not steal the server's core (on a shared machine that also denies
the server the other core, so it is an option, not the default). Every process inherits
this environment, so VAE_MODEL_REPOSITORY=DIR serves DIR instead of the embedded model.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import processes
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
MNIST_TRAIN = MNIST_DIR / "train-images-idx3-ubyte.gz"
SERVER_CPU, CLIENT_CPU = "1", "0"  # taskset core lists when pinning


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        sys.exit("wrk not found: install it (Debian/Ubuntu: apt-get install wrk)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(command: list[str], cpus: str | None) -> list[str]:
    return command if cpus is None else ["taskset", "-c", cpus, *command]


@dataclass
class Server:
    """A running `vae-serve` process."""

    process: subprocess.Popen[bytes]
    port: int
    started: float  # perf_counter at spawn
    log: IO[bytes]  # its stdout and stderr
    ready_s: float = float("nan")  # spawn to the first 200 of /readyz

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU so far of the process and its descendants (every thread)."""
        return sum(processes.cpu_seconds(pid) for pid in processes.tree(self.process.pid))

    def rss_mb(self) -> float:
        """Resident memory of the process alone."""
        return processes.rss_mb(self.process.pid)

    def tree_rss_mb(self) -> float:
        """Resident memory summed over the process and its descendants (worker processes):
        pages two processes share count twice."""
        return sum(processes.rss_mb(pid) for pid in processes.tree(self.process.pid))

    def log_tail(self, size: int = 4000) -> str:
        self.log.seek(0, os.SEEK_END)
        self.log.seek(max(0, self.log.tell() - size))
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM the process, then any descendant it left behind (a launcher that does not
        pass the signal on); SIGKILL whatever is still there after 15 s."""
        tree = processes.tree(self.process.pid)[1:] if self.process.poll() is None else []
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        processes.end(tree)
        self.log.close()


def serve_command() -> list[str]:
    """The `vae-serve` script installed next to this interpreter."""
    script = Path(sys.executable).with_name("vae-serve")
    if not script.exists():
        sys.exit(f"{script} not found: install the project (pip install -e '.[serve]')")
    return [str(script)]


def tree_command(tree: Path) -> list[str]:
    """`vae-serve` from another source tree holding a `service/` package (e.g. an older
    commit: `git archive HEAD service | tar -x -C DIR`). `-S` skips site.py, so that the
    editable install of this checkout cannot shadow the tree; site-packages is added by hand.
    """
    site = next(p for p in sys.path if p.endswith("site-packages"))
    code = (
        f"import sys; sys.path[:0] = [{str(tree)!r}, {site!r}]; "
        "from service.main import main; main()"
    )
    return [sys.executable, "-S", "-c", code]


class ServerFailed(SystemExit):
    """The server exited or did not become ready; uncaught, it ends the script with its
    message (as `sys.exit` would)."""


def start_server(
    env: dict[str, str] | None = None,
    cpus: str | None = None,
    timeout_s: float = 60.0,
    poll_s: float = 0.01,
    command: list[str] | None = None,
) -> Server:
    """Spawn vae-serve (or `command`) and wait for /readyz to answer 200."""
    port = free_port()
    environment = {
        **os.environ,
        "VAE_PORT": str(port),
        "VAE_HOST": "127.0.0.1",
        "VAE_LOG_LEVEL": "warning",
        **(env or {}),
    }
    server = spawn(pinned(command or serve_command(), cpus), environment, port)
    wait_ready(server, "/readyz", timeout_s, poll_s)
    return server


def spawn(command: list[str], env: dict[str, str], port: int, cwd: Path | None = None) -> Server:
    """Start a server process whose output goes to a temporary file."""
    # The log goes to a file: a pipe nobody reads fills up and blocks the server.
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by Server.stop)
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    return Server(process, port, started, log)


def wait_ready(server: Server, path: str, timeout_s: float = 60.0, poll_s: float = 0.01) -> None:
    """Poll `path` until it answers 200; stop the server and raise ServerFailed if it exits
    or `timeout_s` passes first."""
    name = Path(server.process.args[0]).name  # type: ignore[index]
    deadline = server.started + timeout_s
    while time.perf_counter() < deadline:
        if server.process.poll() is not None:
            tail = server.log_tail()
            server.stop()
            raise ServerFailed(f"{name} exited with {server.process.returncode}:\n{tail}")
        if _status(f"{server.url}{path}") == 200:
            server.ready_s = time.perf_counter() - server.started
            return
        time.sleep(poll_s)
    server.stop()
    raise ServerFailed(f"{name} was not ready within {timeout_s} s")


@contextlib.contextmanager
def running(
    env: dict[str, str] | None = None,
    cpus: str | None = None,
    command: list[str] | None = None,
) -> Iterator[Server]:
    server = start_server(env, cpus, command=command)
    try:
        yield server
    finally:
        server.stop()


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@dataclass(frozen=True)
class Request:
    """One benchmarked request: a path and an optional body."""

    name: str
    path: str
    body: bytes | None = None
    content_type: str = "image/png"
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx responses and socket errors
    cpu_us: float  # server CPU per request


class Wrk:
    """Runs wrk against one server; request bodies go in through a small Lua script."""

    def __init__(self, cpus: str | None) -> None:
        self.binary = require_wrk()
        self.cpus = cpus
        self.tmp = Path(tempfile.mkdtemp(prefix="vae-bench-"))

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def script(self, request: Request) -> Path | None:
        if request.body is None and request.method == "GET":
            return None
        body = self.tmp / f"{abs(hash((request.name, request.body)))}.bin"
        body.write_bytes(request.body or b"")
        lua = body.with_suffix(".lua")
        lua.write_text(
            f'wrk.method = "{request.method}"\n'
            f'wrk.headers["Content-Type"] = "{request.content_type}"\n'
            + "".join(f'wrk.headers["{name}"] = "{value}"\n' for name, value in request.headers)
            + f'local f = assert(io.open("{body}", "rb"))\n'
            "wrk.body = f:read('*a')\n"
            "f:close()\n"
        )
        return lua

    def run(
        self, server: Server, request: Request, connections: int, duration_s: float
    ) -> LoadResult:
        command = [
            self.binary,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            "--latency",
            "--timeout",
            "10s",
        ]
        lua = self.script(request)
        if lua is not None:
            command += ["-s", str(lua)]
        command.append(server.url + request.path)
        cpu_before = server.cpu_seconds()
        out = subprocess.run(
            pinned(command, self.cpus), capture_output=True, text=True, check=True
        ).stdout
        cpu = server.cpu_seconds() - cpu_before
        return parse_wrk(out, cpu)


def parse_wrk(out: str, server_cpu_s: float) -> LoadResult:
    """Requests/sec, the 50% and 99% latencies, request and error counts from wrk's text."""
    rps = float(_find(r"Requests/sec:\s+([\d.]+)", out))
    requests = int(_find(r"(\d+) requests in", out))
    errors = int(_find(r"Non-2xx or 3xx responses:\s+(\d+)", out, "0"))
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return LoadResult(
        rps=rps,
        p50_ms=_ms(_find(r"^\s+50%\s+(\S+)", out)),
        p99_ms=_ms(_find(r"^\s+99%\s+(\S+)", out)),
        requests=requests,
        errors=errors,
        cpu_us=server_cpu_s / max(requests, 1) * 1e6,
    )


def _find(pattern: str, text: str, default: str | None = None) -> str:
    match = re.search(pattern, text, re.MULTILINE)
    if match is None:
        if default is None:
            raise ValueError(f"wrk output lacks {pattern!r}:\n{text}")
        return default
    return match.group(1)


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def digit_png() -> bytes:
    """A 28x28 8-bit gray PNG of a handwritten digit: MNIST's first training image when the
    data set is in MNIST_DIR (default ../shared/data/mnist), else a drawn 7 of the same size."""
    if MNIST_TRAIN.exists():
        with gzip.open(MNIST_TRAIN) as f:
            f.read(16)  # IDX header: magic, count, rows, cols
            pixels = np.frombuffer(f.read(28 * 28), np.uint8).reshape(28, 28)
    else:
        pixels = np.zeros((28, 28), np.uint8)
        pixels[6:9, 7:21] = 255
        for row in range(9, 23):
            col = 19 - (row - 9) // 2
            pixels[row, col - 1 : col + 2] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(files: Sequence[bytes], boundary: str = "vaebenchboundary") -> tuple[bytes, str]:
    """A multipart/form-data body with `files` under the field 'files'."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{i}.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(files)
    ]
    return b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def describe_model(server: Server) -> str:
    """Which model the server serves: version, source, preset, layer widths."""
    with urllib.request.urlopen(server.url + "/v1/models", timeout=5) as response:
        serving = json.load(response)["serving"]
    manifest = serving["manifest"]
    training = manifest.get("training", {})
    widths = [784, *training.get("encoder_hidden", []), manifest["latent_dim"]]
    return (
        f"model: version {serving['version']} ({serving['source']}), preset "
        f"{training.get('preset', '?')}, encoder {'-'.join(map(str, widths))}, decoder mirrors it"
    )


def machine() -> str:
    """One line about the machine the figures come from."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0]
    return (
        f"{os.cpu_count()} cores ({model}), Python {sys.version.split()[0]}, "
        f"load average {load:.1f} at start"
    )
