"""Past VAE_MAX_IN_FLIGHT, on the real server: a quick 503 + Retry-After instead of a queue,
/healthz answering throughout, and no slot lost to clients that hang up mid-request."""

from __future__ import annotations

import json
import socket
import statistics
import struct
import threading
import time
from pathlib import Path

from tests.reliability.server import Server, held, request, running
from tests.service import service_samples as samples
from tests.service.service_helpers import wait_for

LIMIT = 4  # VAE_MAX_IN_FLIGHT
CLIENTS = 32
HEAVY = samples.multipart([samples.digit_png(), samples.photo_png()] * 2)  # score k=1000: slow


class Burst:
    """CLIENTS threads posting heavy scores, and one probing /healthz, for `seconds`."""

    def __init__(self, server: Server, seconds: float) -> None:
        self.server, self.until = server, time.monotonic() + seconds
        self.replies: list[tuple[int, dict[str, str], bytes, float]] = []
        self.errors: list[str] = []
        self.healthz: list[tuple[int, float]] = []

    def client(self) -> None:
        headers = {"content-type": HEAVY[1], "accept": "application/json"}
        while time.monotonic() < self.until:
            sent = time.monotonic()
            try:
                status, head, body = request(
                    self.server.port, "POST", "/v1/score?k=1000", HEAVY[0], headers, timeout=120
                )
            except OSError as exc:
                self.errors.append(repr(exc))
                continue
            self.replies.append((status, head, body, time.monotonic() - sent))

    def probe(self) -> None:
        while time.monotonic() < self.until:
            sent = time.monotonic()
            status = self.server.get("/healthz")[0]
            self.healthz.append((status, time.monotonic() - sent))
            time.sleep(0.05)

    def run(self) -> Burst:
        threads = [threading.Thread(target=self.client) for _ in range(CLIENTS)]
        threads.append(threading.Thread(target=self.probe))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        return self


def test_overload_is_refused_quickly_and_healthz_keeps_answering(
    seed_repo: Path, tmp_path: Path
) -> None:
    with running(seed_repo, tmp_path, max_in_flight=LIMIT, retry_after_s=2) as server:
        burst = Burst(server, seconds=5).run()
    assert not burst.errors, burst.errors[:5]
    ok = [reply for reply in burst.replies if reply[0] == 200]
    refused = [reply for reply in burst.replies if reply[0] != 200]
    assert ok and refused, "the burst should both succeed and overflow the limit"
    for status, headers, body, _ in refused:
        assert (status, headers["retry-after"]) == (503, "2")
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["type"].endswith("/overloaded")
    # Refusals do not wait for a slot: they come back much faster than the work they refuse.
    refused_s = statistics.median(seconds for *_, seconds in refused)
    ok_s = statistics.median(seconds for *_, seconds in ok)
    assert refused_s < 0.25 * ok_s, (refused_s, ok_s)
    assert {status for status, _ in burst.healthz} == {200}
    assert statistics.median(seconds for _, seconds in burst.healthz) < 0.5
    print(
        f"{len(ok)} scored (median {ok_s * 1e3:.0f} ms), {len(refused)} refused (median "
        f"{refused_s * 1e3:.1f} ms); /healthz max {max(s for _, s in burst.healthz) * 1e3:.0f} ms"
    )


def test_clients_that_hang_up_mid_body_give_their_slots_back(
    seed_repo: Path, tmp_path: Path
) -> None:
    png = samples.digit_png()
    with running(seed_repo, tmp_path, max_in_flight=LIMIT) as server:
        for _ in range(3):  # more hang-ups than slots, several times over
            hung = [
                held(server.port, "POST", "/v1/reconstruct", png, "image/png") for _ in range(LIMIT)
            ]
            wait_for(lambda: server.in_flight() >= LIMIT + 1, timeout=30, what="the limit reached")
            assert request(server.port, "GET", "/v1/sample?n=1")[0] == 503
            for each in hung:  # a reset, as a crashed client or a dropped mobile link gives
                each.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                each.close()
            wait_for(lambda: server.in_flight() == 1, timeout=30, what="the slots released")
        assert request(server.port, "GET", "/v1/sample?n=1")[0] == 200
        metrics = server.get("/metrics")[2].decode()
    assert 'route="/v1/reconstruct",status="499"} 12.0' in metrics  # counted, not as 5xx
    assert 'status="500"' not in metrics
