"""`compose up --scale api=3` of the real docker-compose.yml: three API replicas behind the
balancer (nginx, the Dockerfile's `balancer` target), on the project's bridge network, with
only the balancer's port published on 127.0.0.1 (select: -m container).

Under load (16 connections, at least LOAD_S seconds, POST /v1/reconstruct through the
balancer) one replica is killed with SIGKILL, a new model version is published into the
`models` volume, and the killed replica is started again. The client must see no failure at
all (no 5xx, no connection error), responses from all three replicas (X-Served-By), the
restarted one included, and every replica must end on the new version.

With CI=true it must run: a missing tool fails it. Elsewhere it skips and says what to install.
Commands and output: test-artifacts/container/scale-commands.log; figures: scale-figures.json.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.container import harness as h
from tests.container.test_container import ARTIFACTS, SERVE_IMAGE, require_tools
from tests.mnist_files import synthetic_digits
from training.config import TrainConfig
from training.model import VAE
from training.publish import publish_version

pytestmark = pytest.mark.container

BALANCER_IMAGE = "vae-mnist:balancer"
REPLICAS = 3
CONNECTIONS = 16
LOAD_S = 24.0  # at least; and until the restarted replica has served for AFTER_RESTART_S
AFTER_RESTART_S = 4.0
VERSION = 7  # not the embedded model's version
POLL_INTERVAL_S = 0.5
MAX_BODY_BYTES = 5 * 2**20  # service/settings.py's default VAE_MAX_BODY_BYTES


def test_replicas_behind_the_balancer_survive_a_kill_and_a_new_version() -> None:
    require_tools()
    started = time.monotonic()
    runner = h.Runner(ARTIFACTS / "scale-commands.log")
    h.sweep_stale_roots(runner)
    root = h.make_root(runner)
    podman = h.Podman(root, runner)
    port = h.free_port()
    compose = h.Compose(
        podman,
        project=f"vae-mnist-scale-{uuid.uuid4().hex[:8]}",
        env={"VAE_PUBLISH_PORT": str(port), "VAE_POLL_INTERVAL_S": str(POLL_INTERVAL_S)},
        build_args="--pull=never --network=host",
        files=(h.COMPOSE_FILE,),  # the product file alone: bridge network, published port
    )
    base = f"http://127.0.0.1:{port}"
    figures: dict[str, Any] = {}
    try:
        h.build_base_image(podman, root)
        for service, image in (("api", SERVE_IMAGE), ("balancer", BALANCER_IMAGE)):
            t0 = time.monotonic()
            compose("build", service, timeout=900)
            figures[f"{service}_build_seconds"] = round(time.monotonic() - t0, 1)
            figures[f"{image.split(':')[1]}_image_bytes"] = podman.image_size(image)
        t0 = time.monotonic()
        compose("up", "-d", "--no-build", "--scale", f"api={REPLICAS}", timeout=300)
        replicas = served_by(podman, compose.containers("api"))
        assert len(replicas) == REPLICAS, replicas
        h.wait_for("each replica via the balancer", lambda: all_seen(base, replicas), timeout=90)
        figures["up_to_all_replicas_seconds"] = round(time.monotonic() - t0, 1)
        check_balancer(podman, compose, base)
        figures.update(kill_publish_restart(podman, compose, base, replicas))
        compose("down", "--volumes", "--timeout", "5", timeout=120)
    finally:
        problems = h.tear_down(compose, root, figures, started, ARTIFACTS / "scale-figures.json")
    assert not problems, f"clean-up left something behind: {problems}"


def served_by(podman: h.Podman, names: list[str]) -> dict[str, str]:
    """Each replica's X-Served-By (its hostname, then its pid: 1) -> its container name."""
    hostnames = {n: podman("inspect", "--format", "{{.Config.Hostname}}", n).stdout for n in names}
    return {f"{hostname.strip()}/1": name for name, hostname in hostnames.items()}


def all_seen(base: str, replicas: dict[str, str]) -> bool | None:
    """True once a round of requests through the balancer has reached every replica."""
    seen = {h.http("GET", f"{base}/readyz").headers.get("x-served-by") for _ in range(30)}
    return True if seen >= set(replicas) else None


def check_balancer(podman: h.Podman, compose: h.Compose, base: str) -> None:
    """Request ids pass through (or are made), nginx's own 413 speaks problem+json at the
    service's limit, the balancer is confined and its healthcheck passes."""
    given = h.http("GET", f"{base}/readyz", headers={"X-Request-ID": "scale-test-1"})
    assert given.headers["x-request-id"] == "scale-test-1", given.headers
    made = h.http("GET", f"{base}/readyz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made), made  # nginx's $request_id
    too_large = h.http("POST", f"{base}/v1/reconstruct", body=bytes(MAX_BODY_BYTES + 1))
    assert too_large.status == 413, too_large
    assert too_large.headers["content-type"] == "application/problem+json"
    assert too_large.json()["status"] == 413 and too_large.headers["x-request-id"]
    balancer = compose.container("balancer")
    assert podman("exec", balancer, "id", "-u").stdout.strip() == "10001"
    write = podman("exec", balancer, "touch", "/probe", check=False)
    assert "Read-only file system" in write.stderr, write.stderr
    podman("healthcheck", "run", balancer, timeout=30)


@dataclass
class Load:
    """CONNECTIONS threads posting one digit each, a new connection per request (a reused
    keep-alive connection that the server closes while idle is the client's to retry, and
    says nothing about the balancer), until `stop` is set."""

    url: str
    body: bytes
    stop: threading.Event = field(default_factory=threading.Event)
    # (seconds since start, status or 0, X-Served-By, X-Model-Version, error)
    results: list[tuple[float, int, str, str, str]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def run(self) -> None:
        headers = {"Content-Type": "image/png"}
        while not self.stop.is_set():
            try:
                resp = h.http("POST", self.url, body=self.body, headers=headers)
                row = (resp.status, resp.headers.get("x-served-by", ""))
                self.results.append((self.now(), *row, resp.headers.get("x-model-version", ""), ""))
            except OSError as exc:  # refused, reset, timed out
                self.results.append((self.now(), 0, "", "", repr(exc)))

    def now(self) -> float:
        return time.monotonic() - self.started

    def served_after(self, t: float) -> set[str]:
        return {r[2] for r in self.results if r[0] >= t and r[1] == 200}


def kill_publish_restart(
    podman: h.Podman, compose: h.Compose, base: str, replicas: dict[str, str]
) -> dict[str, Any]:
    publish = prepare_version(podman, f"{compose.project}_models")
    victim_id, victim = sorted(replicas.items())[1]
    images, _ = synthetic_digits(1, seed=6)
    load = Load(f"{base}/v1/reconstruct", h.png_gray(images[0]))
    threads = [threading.Thread(target=load.run, daemon=True) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(5)
        podman("kill", "--signal", "KILL", victim)
        killed_at = load.now()
        time.sleep(3)
        publish()
        published_at = load.now()
        time.sleep(3)
        podman("start", victim)  # podman without systemd restarts nothing by itself
        restarted_at = load.now()
        h.wait_for(
            "the restarted replica to serve through the balancer",
            lambda: True if victim_id in load.served_after(restarted_at) else None,
            timeout=60,
        )
        back_at = load.now()
        time.sleep(max(AFTER_RESTART_S, LOAD_S - load.now()))
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=15)
    duration = load.now()
    results = list(load.results)
    failed = [r for r in results if r[1] != 200]
    assert not failed, f"{len(failed)} of {len(results)} failed, first: {failed[:5]}"
    assert duration >= LOAD_S, duration
    # Every replica served, and the restarted one again once back; all end on VERSION.
    assert {r[2] for r in results} == set(replicas), Counter(r[2] for r in results)
    tail = [r for r in results if r[0] >= back_at + 1]
    assert {r[2] for r in tail} == set(replicas), Counter(r[2] for r in tail)
    assert {r[3] for r in tail} == {str(VERSION)}, Counter(r[3] for r in tail)
    for name in replicas.values():
        assert serving(podman, name) == ("repository", VERSION), name
    new = [r[0] for r in results if r[3] == str(VERSION)]
    return {
        "requests": len(results),
        "load_seconds": round(duration, 1),
        "requests_per_second": round(len(results) / duration, 1),
        "by_replica": dict(Counter(r[2] for r in results)),
        "killed_at_s": round(killed_at, 1),
        "published_at_s": round(published_at, 1),
        "first_new_version_after_publish_s": round(min(new) - published_at, 2),
        "restarted_at_s": round(restarted_at, 1),
        "restarted_replica_serving_after_s": round(back_at - restarted_at, 2),
        "requests_retried_by_the_balancer": retried(podman, compose.container("balancer")),
    }


def prepare_version(podman: h.Podman, volume: str) -> Callable[[], None]:
    """Export a tiny model's version VERSION beside the replicas' volume (the export takes
    seconds of CPU, which the load would stretch), and return what publishes it: a rename
    into the volume, the exporter's own last step (docs/model-repository.md)."""
    mountpoint = podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout
    repository = Path(mountpoint.strip())
    staging = repository.parent / "staging"  # the same file system: rename is atomic
    cfg = TrainConfig.from_preset("tiny", seed=0)
    torch.manual_seed(0)
    publish_version(staging, VAE(cfg), cfg, force=True, version=VERSION)
    (repository / "vae").mkdir(exist_ok=True)

    def publish() -> None:
        (staging / "vae" / str(VERSION)).rename(repository / "vae" / str(VERSION))

    return publish


def serving(podman: h.Podman, name: str) -> tuple[str, int]:
    """What one replica serves, asked inside it (not through the balancer)."""
    url = "http://127.0.0.1:8000/v1/models"
    probe = f"import urllib.request as u; print(u.urlopen('{url}', timeout=5).read().decode())"
    models = json.loads(podman("exec", name, "python", "-c", probe).stdout)
    return models["serving"]["source"], models["serving"]["version"]


def retried(podman: h.Podman, balancer: str) -> int:
    """Requests the balancer sent to more than one replica (its access log lists each)."""
    log = podman("logs", balancer).stdout
    return sum(1 for line in log.splitlines() if re.search(r"upstream_status=\S+, ", line))
