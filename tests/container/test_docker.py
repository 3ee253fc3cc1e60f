"""The images as users build them: Debian's Docker Engine (docker.io 20.10, dockerd started by
the test in a private directory) builds both targets of the real Dockerfile with BuildKit, and
the serve image runs to a healthy HEALTHCHECK (Docker's own scheduler runs it) and answers a
reconstruct. First, the legacy builder (DOCKER_BUILDKIT=0, as Compose without buildx) builds
`serve` without running any torch stage: the Dockerfile's stage order.

With CI=true it must run: a missing tool fails it. Elsewhere it skips and says what to install
(.ci/setup-containers.sh). Commands and output: test-artifacts/container/docker-commands.log;
figures: test-artifacts/container/docker-figures.json.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from tests.container import dockerd
from tests.container import harness as h
from tests.container.test_container import ARTIFACTS, SERVE_IMAGE, TRAIN_IMAGE, in_image, ok
from tests.lockfile import LOCKS
from tests.mnist_files import synthetic_digits

pytestmark = pytest.mark.container

LEGACY_IMAGE = "vae-mnist:serve-legacy-builder"
HEALTHY_TIMEOUT_S = 90  # HEALTHCHECK: first check 10 s after start, every 10 s


def test_docker_engine_builds_both_targets_and_runs_serve_healthy() -> None:
    h.require(dockerd.missing_requirements(), "the Docker test")
    started = time.monotonic()
    runner = h.Runner(ARTIFACTS / "docker-commands.log")
    h.sweep_stale_roots(runner)
    docker = dockerd.Docker(h.make_root(runner), runner)
    figures: dict[str, Any] = {}
    try:
        figures["engine_version"] = docker.start()
        assert figures["engine_version"].startswith("20.10."), figures
        figures["base_image"] = docker.build_base_image(docker.root)
        figures.update(build_images(docker))
        figures.update(serve_until_healthy(docker))
    finally:
        for name in docker("ps", "--all", "--format", "{{.Names}}", check=False).stdout.split():
            docker("logs", "--tail", "100", name, check=False)
        problems = docker.close()
        figures["test_seconds"] = round(time.monotonic() - started, 1)
        (ARTIFACTS / "docker-figures.json").write_text(json.dumps(figures, indent=2) + "\n")
        print(f"docker figures: {json.dumps(figures)}")
    assert not problems, problems


def build_images(docker: dockerd.Docker) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    seconds, out = docker.build_target("serve", LEGACY_IMAGE, legacy=True)
    figures["legacy_serve_build_seconds"] = seconds
    steps = re.findall(r"^Step \d+/\d+ : (.*)$", out, re.MULTILINE)
    assert steps, f"no legacy builder output:\n{out[-2000:]}"
    torch_steps = [s for s in steps if "torch" in s.lower()]
    assert not torch_steps, f"the legacy builder ran torch stages for serve: {torch_steps}"
    figures["serve_build_seconds"], _ = docker.build_target("serve", SERVE_IMAGE)
    torch = (LOCKS / "torch.txt").read_text().split()[-1]
    wheels = h.torch_wheel_dir(docker.root, torch)
    with dockerd.serve_directory(wheels) as url:
        # Torch alone comes from the local wheel; its dependencies from train.lock, hashed.
        options = f"--no-index --find-links={url} --trusted-host=127.0.0.1"
        figures["train_build_seconds"], _ = docker.build_target(
            "train", TRAIN_IMAGE, "--build-arg", f"TORCH_PIP_OPTIONS={options}"
        )
    probe = "import torch; assert not torch.version.cuda; print(torch.__version__)"
    version = docker(*in_image(TRAIN_IMAGE, "python", "-c", probe), timeout=120).stdout
    assert "+cpu" in version, version
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
    docker(*in_image(SERVE_IMAGE, "python", "-c", probe))
    for image in (SERVE_IMAGE, TRAIN_IMAGE):
        size = docker("image", "inspect", "--format", "{{.Size}}", image).stdout
        figures[f"{image.split(':')[1]}_image_bytes"] = int(size)
    return figures


def serve_until_healthy(docker: dockerd.Docker) -> dict[str, Any]:
    """`docker run` as docker-compose.yml confines the API; Docker's healthcheck turns it
    healthy; a reconstruct answers a 28x28 PNG."""
    port = h.free_port()
    t0 = time.monotonic()
    docker(
        *("run", "--detach", "--name", "vae-api", "--network=host", "--read-only"),
        *("--tmpfs", "/tmp", "--cap-drop=ALL", "--security-opt=no-new-privileges"),
        *("--env", "VAE_HOST=127.0.0.1", "--env", f"VAE_PORT={port}", SERVE_IMAGE),
    )

    def healthy() -> str | None:
        state = docker(
            "inspect", "--format", "{{.State.Status}} {{.State.Health.Status}}", "vae-api"
        )
        status, health = state.stdout.split()
        if status != "running" or health == "unhealthy":
            raise h.CommandError(f"the API container is {status}/{health}")
        return health if health == "healthy" else None

    h.wait_for("a healthy HEALTHCHECK", healthy, timeout=HEALTHY_TIMEOUT_S, interval=1)
    seconds = round(time.monotonic() - t0, 1)
    base = f"http://127.0.0.1:{port}"
    assert ok(h.http("GET", f"{base}/readyz"))
    images, _ = synthetic_digits(1, seed=5)
    headers = {"Content-Type": "image/png"}
    rec = h.http("POST", f"{base}/v1/reconstruct", body=h.png_gray(images[0]), headers=headers)
    assert rec.status == 200, rec.body[:500]
    assert h.png_size(rec.body) == (28, 28)
    user = docker("exec", "vae-api", "id", "-u").stdout.strip()
    assert user == "10001", user
    return {"run_to_healthy_seconds": seconds}
