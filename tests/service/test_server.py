"""The real server: uvicorn (uvloop + httptools) as `vae-serve` runs it, over real sockets.

Requests are held in flight by sending their headers and only part of the body.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.settings import Settings
from tests.service import service_samples as samples
from tests.service.service_helpers import (
    accepting,
    install,
    run_vae_serve,
    serving,
    wait_for,
)

BODY = samples.digit_png()


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def post(port: int, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body=body)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def in_flight(port: int) -> float:
    text = get(port, "/metrics")[2].decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "vae_http_requests_in_flight":
                return s.value
    return 0.0


def hold_request(port: int) -> socket.socket:
    """A reconstruct whose body is only partly sent: in flight until `finish` is called."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        "POST /v1/reconstruct?preprocess=none HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: image/png\r\nContent-Length: {len(BODY)}\r\n"
        "Accept: application/json\r\n\r\n"
    )
    sock.sendall(head.encode() + BODY[:10])
    return sock


def finish(sock: socket.socket) -> bytes:
    sock.sendall(BODY[10:])
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
        if b"\r\n\r\n" in reply and b'"probs"' in reply and reply.rstrip().endswith(b"}"):
            break
    sock.close()
    return reply


@pytest.fixture
def server(
    repo: Path, published: dict[str, Path], make_settings: Callable[..., Settings]
) -> Iterator[int]:
    """The real server with max_in_flight=2."""
    install(repo, published["a"], 1)
    with serving(make_settings(max_in_flight=2, retry_after_s=3, log_level="warning")) as port:
        yield port


def test_past_the_in_flight_limit_503_with_retry_after_and_healthz_still_answers(
    server: int,
) -> None:
    held = [hold_request(server), hold_request(server)]
    wait_for(lambda: in_flight(server) >= 3, what="two requests in flight")  # + /metrics itself
    started = time.monotonic()
    status, headers, body = get(server, "/v1/sample?n=1")
    assert status == 503 and headers["retry-after"] == "3"
    assert headers["content-type"] == "application/problem+json" and b"in flight" in body
    assert time.monotonic() - started < 1.0
    status, headers, body = post(server, "/v2/models/vae/infer", b"{}")  # the same limit
    assert status == 503 and headers["retry-after"] == "3"
    assert json.loads(body) == {"error": "2 requests are already in flight; retry after 3 s"}
    assert get(server, "/v2/models/vae")[0] == 200  # metadata is not limited
    for path in ("/healthz", "/readyz", "/metrics"):
        assert get(server, path)[0] == 200, path
    replies = [finish(sock) for sock in held]
    assert all(reply.startswith(b"HTTP/1.1 200") for reply in replies)
    assert all(b"x-model-version: 1" in reply.lower() for reply in replies)
    assert get(server, "/v1/sample?n=1")[0] == 200


def test_head_is_answered_wherever_get_is(server: int) -> None:
    """RFC 9110: HEAD gets GET's status and headers (Content-Length included), no body."""
    for path in ("/v1/sample?n=4&seed=1", "/healthz", "/readyz", "/v1/models", "/metrics"):
        status, headers, body = get(server, path)
        head_status, head_headers, head_body = get(server, path, method="HEAD")
        assert body and (head_status, head_body) == (status, b""), path
        for name in ("content-type", "x-model-version"):
            assert head_headers[name] == headers[name], (path, name)
        if "content-length" in headers and path != "/metrics":  # /metrics counts this request
            assert head_headers["content-length"] == headers["content-length"], path
    assert get(server, "/v1/reconstruct", method="HEAD")[0] == 405  # POST only


def test_a_body_that_does_not_arrive_in_time_is_408_and_frees_its_slot(
    repo: Path, published: dict[str, Path], make_settings: Callable[..., Settings]
) -> None:
    install(repo, published["a"], 1)
    settings = make_settings(max_in_flight=1, body_timeout_s=0.5, log_level="warning")
    with serving(settings) as port:
        stalled = hold_request(port)  # 10 bytes of the body, then nothing
        started = time.monotonic()
        reply = b""
        while chunk := stalled.recv(65536):  # the server answers, then closes
            reply += chunk
        waited = time.monotonic() - started
        stalled.close()
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), reply
        assert b"content-type: application/problem+json" in head.lower()
        assert b"connection: close" in head.lower()
        assert b"did not arrive within 0.5 s" in body and b'"field":"body"' in body
        assert 0.4 < waited < 5
        assert in_flight(port) == 1  # only the /metrics request itself: the slot is free
        # A body that arrives in time, in pieces, is answered as usual.
        slow_but_in_time = hold_request(port)
        time.sleep(0.1)
        assert finish(slow_but_in_time).startswith(b"HTTP/1.1 200")


def test_sigterm_lets_accepted_requests_complete(
    repo: Path, published: dict[str, Path], tmp_path: Path
) -> None:
    install(repo, published["a"], 1)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    env = {
        **os.environ,
        "VAE_PORT": str(port),
        "VAE_MODEL_REPOSITORY": str(repo),
        "VAE_EMBEDDED_MODEL_DIR": str(tmp_path / "none"),
        "VAE_GRACEFUL_SHUTDOWN_S": "20",
        "VAE_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service.main"], env=env, cwd=Path(__file__).parents[2]
    )
    try:
        wait_for(lambda: _ready(port), timeout=60, what="vae-serve to be ready")
        held = hold_request(port)
        wait_for(lambda: in_flight(port) >= 2, what="the request in flight")
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: not accepting(port), what="the server to stop accepting")
        assert finish(held).startswith(b"HTTP/1.1 200")
        # uvicorn re-raises the captured SIGTERM once shut down, as a default handler would.
        assert process.wait(timeout=20) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _ready(port: int) -> bool:
    try:
        return get(port, "/readyz")[0] == 200
    except OSError:
        return False


def test_invalid_settings_stop_vae_serve_with_a_clear_message(tmp_path: Path) -> None:
    env = {**os.environ, "VAE_PORT": "0", "VAE_MAX_BATCH": "lots"}
    result = run_vae_serve(env)
    assert result.returncode == 1
    assert "invalid settings" in result.stderr
    assert "VAE_PORT" in result.stderr and "VAE_MAX_BATCH" in result.stderr
