"""Huge bodies over a real socket (uvicorn + httptools, not the test client): 50 MB of JSON,
chunked or declared, gets its 413 problem+json quickly, is not read to the end, and the server
carries on. (tests/service/test_api_errors.py holds the in-process catalog of bad inputs.)"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.reliability.server import read_response, request, running

FIFTY_MB = 50 * 2**20
CHUNK = b"[" * 65536  # the start of very deeply nested JSON, were it ever parsed


def send_huge(port: int, chunked: bool) -> tuple[int, bytes, int, float]:
    """POST 50 MB of JSON to /v1/decode while reading the reply: (status, body, bytes sent, s)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {FIFTY_MB}"
    head = f"POST /v1/decode HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{framing}"
    sent = 0

    def send() -> None:
        nonlocal sent
        try:
            sock.sendall(head.encode() + b"\r\n\r\n")
            while sent < FIFTY_MB:
                sock.sendall(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK) if chunked else CHUNK)
                sent += len(CHUNK)
        except OSError:
            pass  # the server has answered and closed: the rest is never read

    sender = threading.Thread(target=send)
    start = time.monotonic()
    sender.start()
    status, body = read_response(sock)
    elapsed = time.monotonic() - start
    sender.join(timeout=60)
    return status, body, sent, elapsed


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_fifty_megabytes_of_json_are_refused_early_with_413(
    seed_repo: Path, tmp_path: Path, chunked: bool
) -> None:
    with running(seed_repo, tmp_path) as server:  # the default limit: 5 MiB
        status, body, sent, elapsed = send_huge(server.port, chunked)
        assert status == 413, body
        problem = json.loads(body)
        assert problem["type"].endswith("/body-too-large") and problem["field"] == "body"
        assert sent < FIFTY_MB // 2, f"{sent} bytes were taken in before the 413"
        assert elapsed < 10
        assert request(server.port, "GET", "/v1/sample?n=1")[0] == 200
        metrics = server.get("/metrics")[2].decode()
    assert 'status="5' not in metrics
