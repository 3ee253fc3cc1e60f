"""The real server in a subprocess (`python -m service.main`, as `vae-serve`) and raw HTTP to it.

Everything talks to 127.0.0.1 only; every wait has a deadline; the process is always killed.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.soak import free_port, serving

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int

    def get(self, path: str, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
        return request(self.port, "GET", path, timeout=timeout)

    def in_flight(self) -> float:
        """The vae_http_requests_in_flight gauge (the /metrics request itself included)."""
        return self.metric("vae_http_requests_in_flight")

    def metric(self, name: str, **labels: str) -> float:
        """The sample `name` with these labels (0 when absent) from /metrics."""
        text = self.get("/metrics")[2].decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return sample.value
        return 0.0

    def accepting(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
            return True
        except OSError:
            return False


@contextlib.contextmanager
def running(repo: Path, log_dir: Path, **settings: object) -> Iterator[Server]:
    """The service on a free port serving `repo` (no embedded fallback), once ready."""
    port = free_port()
    with serving(repo, log_dir / f"server-{port}.log", port=port, **settings) as process:
        yield Server(process, port)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, lower-cased headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def held(port: int, method: str, path: str, body: bytes, content_type: str) -> HeldRequest:
    """A request whose body is sent but for its last byte: in flight until `finish`."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nAccept: application/json\r\n\r\n"
    )
    sock.sendall(head.encode() + body[:-1])
    return HeldRequest(sock, body[-1:])


@dataclass
class HeldRequest:
    sock: socket.socket
    rest: bytes

    def finish(self) -> tuple[int, bytes]:
        """Send the last byte; read the whole response: (status, body)."""
        self.sock.sendall(self.rest)
        return read_response(self.sock)

    def close(self) -> None:
        self.sock.close()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """(status, body) of one Content-Length response; (0, b'') if the peer closed first."""
    data = b""
    deadline = time.monotonic() + 60
    while b"\r\n\r\n" not in data and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(fields.get("content-length", "0"))
    while len(body) < length and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    sock.close()
    return int(lines[0].split()[1]), body


class HealthProbe:
    """Probes /healthz every 50 ms on fresh connections while in use: the worst latency seen
    is how long the event loop stalled (within the probe's own resolution)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)

    def _probe(self) -> None:
        while not self._stop.wait(0.05):
            start = time.monotonic()
            try:
                status = request(self.port, "GET", "/healthz", timeout=30)[0]
            except OSError as exc:
                self.failures.append(repr(exc))
                continue
            self.latencies.append(time.monotonic() - start)
            if status != 200:
                self.failures.append(f"status {status}")
