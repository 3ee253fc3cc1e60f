"""The real Dockerfile and docker-compose.yml, built and run with podman (select: -m container).

One test walks the whole path a user takes: lint and validate the files, build both images,
`compose up` (the API serves the embedded default model on a first start), reconstruct and
sample over HTTP, check the API's confinement, run the `train` profile on tiny synthetic data
(refused by the quality gate against the embedded model, then forced, then again, passing)
and watch the running API swap to each new version, then `compose down -v`.

With CI=true it must run: a missing tool fails it. Elsewhere it skips and says what to install.
Commands and their output go to test-artifacts/container/commands.log, the measured figures
to test-artifacts/container/figures.json (VAE_TEST_ARTIFACTS moves both).
"""

from __future__ import annotations

import json
import os
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.container import harness as h
from tests.lockfile import LOCKS, disagreements, read_lock, requirement_name
from tests.mnist_files import synthetic_digits, write_mnist

pytestmark = pytest.mark.container

ARTIFACTS = Path(os.environ.get("VAE_TEST_ARTIFACTS", h.REPO / "test-artifacts")) / "container"
SERVE_IMAGE = "vae-mnist:serve"
TRAIN_IMAGE = "vae-mnist:train"
SERVE_IMAGE_BUDGET = 350 * 10**6
POLL_INTERVAL_S = 0.5  # tests/container/compose.test.yml
TRAIN_ENV = {"VAE_TRAIN_PRESET": "tiny", "VAE_TRAIN_ITERATIONS": "30", "VAE_TRAIN_EVAL_K": "5"}


def require_tools() -> None:
    h.require(h.missing_requirements(), "the container test")


def test_compose_stack_builds_serves_and_swaps_models() -> None:
    require_tools()
    started = time.monotonic()
    runner = h.Runner(ARTIFACTS / "commands.log")
    figures: dict[str, Any] = {}
    h.sweep_stale_roots(runner)
    root = h.make_root(runner)
    podman = h.Podman(root, runner)
    port = h.free_port()
    data_dir = root / "mnist"
    compose = h.Compose(
        podman,
        project=f"vae-mnist-test-{uuid.uuid4().hex[:8]}",
        env={"VAE_TEST_PORT": str(port), "VAE_TEST_DATA_DIR": str(data_dir), **TRAIN_ENV},
    )
    try:
        check_static_files(runner)
        figures["base_image"] = h.build_base_image(podman, root)
        figures.update(build_images(podman, compose, root))
        check_images(podman, figures)
        base = f"http://127.0.0.1:{port}"
        figures.update(serve_first_start(compose, base))
        check_api_confinement(podman, compose)
        check_api_requests(base)
        write_mnist(data_dir, n=5_200)
        data_dir.chmod(0o755)  # the training job runs as uid 10001
        figures.update(train_and_swap(podman, compose, base))
        compose_down(podman, compose)
    finally:
        problems = h.tear_down(compose, root, figures, started, ARTIFACTS / "figures.json")
    assert not problems, f"clean-up left something behind: {problems}"


# ----------------------------------------------------------------------------------------------


def check_static_files(runner: h.Runner) -> None:
    """hadolint (fails on warnings too: fix or justify inline) and Compose's own validation."""
    runner.run(
        [h.find_tool("hadolint") or "hadolint", "--failure-threshold", "warning", h.DOCKERFILE],
        timeout=60,
    )
    dockerfile = h.DOCKERFILE.read_text()
    assert "FROM python:3.11-slim AS base" in dockerfile, "the harness stands in for this FROM"

    product = h.compose_config(runner, "-f", str(h.COMPOSE_FILE))
    assert set(product["services"]) == {"api", "balancer"}, "the api and its balancer by default"
    api, balancer = product["services"]["api"], product["services"]["balancer"]
    for service in (api, balancer):
        assert service["restart"] == "unless-stopped"
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert service["security_opt"] == ["no-new-privileges:true"]
        assert service["healthcheck"]["test"][0] == "CMD"
    # The balancer publishes the port; the replicas publish nothing (--scale needs that).
    assert "ports" not in api, api["ports"]
    assert [p["target"] for p in balancer["ports"]] == [8000]
    assert balancer["ports"][0]["published"] == "8000"
    assert balancer["ports"][0]["host_ip"] == "127.0.0.1"
    assert balancer["build"]["target"] == "balancer"
    assert [(v["source"], v["target"], v.get("read_only")) for v in api["volumes"]] == [
        ("models", "/models", True)
    ]
    assert "depends_on" not in api, "podman-compose fails on depends_on into an inactive profile"

    with_train = h.compose_config(runner, "-f", str(h.COMPOSE_FILE), "--profile", "train")
    train = with_train["services"]["train"]
    assert train["profiles"] == ["train"]
    assert train["read_only"] is True and train["cap_drop"] == ["ALL"]
    assert {v["target"]: v["source"] for v in train["volumes"]} == {
        "/models": "models",
        "/data": "mnist-data",
    }
    # The embedded default model's recipe (tests/training/test_gate.py checks its manifest).
    assert "--preset=compact" in train["command"] and "--iterations=50000" in train["command"]
    tiny = h.compose_config(
        runner, "-f", str(h.COMPOSE_FILE), "--profile", "train", env={"VAE_TRAIN_PRESET": "tiny"}
    )
    assert "--preset=tiny" in tiny["services"]["train"]["command"], "VAE_TRAIN_PRESET is unused"

    # The test override must be valid Compose too.
    h.compose_config(
        runner,
        *("-f", str(h.COMPOSE_FILE), "-f", str(h.OVERRIDE_FILE), "--profile", "train"),
        env={"VAE_TEST_PORT": "8000", "VAE_TEST_DATA_DIR": "/tmp"},
    )


def build_images(podman: h.Podman, compose: h.Compose, root: Path) -> dict[str, Any]:
    """Both images through the compose file's own build sections (api: serve, train: train)."""
    pins = tomllib.loads((h.REPO / "pyproject.toml").read_text())["project"]
    torch = next(r for r in pins["optional-dependencies"]["train"] if r.startswith("torch=="))
    wheels = h.torch_wheel_dir(root, torch)
    compose.build_args = f"--pull=never --network=host --volume={wheels}:/mnt/torch-wheels:ro"
    figures = {}
    for service, image in (("api", SERVE_IMAGE), ("train", TRAIN_IMAGE)):
        t0 = time.monotonic()
        compose("build", service, timeout=900, profile="train")
        figures[f"{service}_build_seconds"] = round(time.monotonic() - t0, 1)
        figures[f"{image.split(':')[1]}_image_bytes"] = podman.image_size(image)
    figures["base_image_bytes"] = podman.image_size(h.BASE_IMAGE)
    return figures


def check_images(podman: h.Podman, figures: dict[str, Any]) -> None:
    # No torch in the serving image, by import and by pip's record.
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
    podman(*in_image(SERVE_IMAGE, "python", "-c", probe))
    pip_list = podman(*in_image(SERVE_IMAGE, "python", "-m", "pip", "list"), timeout=60).stdout
    assert "torch" not in pip_list.lower(), pip_list
    assert "onnxruntime" in pip_list
    check_locked(podman, SERVE_IMAGE, LOCKS / "serve.lock")
    check_locked(podman, TRAIN_IMAGE, LOCKS / "train.lock")
    # On the stand-in base (151 MB: Debian's Python and pip), which is no lighter than the
    # official python:3.11-slim, so the same image on the official base is no larger.
    figures["serve_layers_bytes"] = figures["serve_image_bytes"] - figures["base_image_bytes"]
    assert figures["serve_image_bytes"] < SERVE_IMAGE_BUDGET, figures
    # The train image's torch is the CPU build (the Dockerfile asserts it too).
    probe = "import torch; assert not torch.version.cuda; print(torch.__version__)"
    version = podman(*in_image(TRAIN_IMAGE, "python", "-c", probe), timeout=120).stdout
    assert "+cpu" in version, version
    for image in (SERVE_IMAGE, TRAIN_IMAGE):
        user = podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
        assert user and not user.startswith(("0", "root")), f"{image} runs as {user!r}"
    health = podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}", SERVE_IMAGE)
    assert "/readyz" in health.stdout, f"the serve image has no HEALTHCHECK: {health.stdout}"


def check_locked(podman: h.Podman, image: str, lock: Path) -> None:
    """The image holds every locked package at its locked version: it was installed from the
    lock (the Dockerfile's pip install --require-hashes --no-deps, which fails on any hash that
    differs), not resolved afresh."""
    listing = podman(*in_image(image, "python", "-m", "pip", "list", "--format=json"), timeout=60)
    installed = {requirement_name(p["name"]): p["version"] for p in json.loads(listing.stdout)}
    wrong = disagreements(read_lock(lock), installed)
    assert not wrong, f"{image} vs {lock.name} (locked, installed): {wrong}"


def in_image(image: str, *cmd: str) -> list[str]:
    return [
        "run",
        "--rm",
        "--network=none",
        "--no-healthcheck",
        "--entrypoint",
        cmd[0],
        image,
        *cmd[1:],
    ]


def serve_first_start(compose: h.Compose, base: str) -> dict[str, Any]:
    """`compose up -d api` before any training: ready, serving the embedded default model.
    (The balancer in front of replicas is test_scale.py's: here the API is on the host network.)
    """
    t0 = time.monotonic()
    compose("up", "-d", "--no-build", "api", timeout=180)
    api = compose.container("api")

    def ready_or_crashing() -> h.Response | None:
        state = compose.podman("inspect", "--format", "{{.State.Status}} {{.RestartCount}}", api)
        status, restarts = state.stdout.split()
        if status in ("exited", "dead") or int(restarts) >= 2:
            logs = compose.podman("logs", "--tail", "40", api, check=False)
            raise h.CommandError(
                f"the API container is {status} after {restarts} restarts; its log ends:\n"
                f"{(logs.stdout + logs.stderr)[-4000:]}"
            )
        return ok(h.http("GET", f"{base}/readyz"))

    ready, _ = h.wait_for("/readyz", ready_or_crashing, timeout=120)
    seconds = round(time.monotonic() - t0, 2)
    models = h.http("GET", f"{base}/v1/models").json()
    assert models["serving"]["source"] == "embedded", models
    assert ready.headers["x-model-version"] == str(models["serving"]["version"])
    assert h.http("GET", f"{base}/healthz").status == 200
    return {"compose_up_to_ready_seconds": seconds}


def ok(resp: h.Response) -> h.Response | None:
    return resp if resp.status == 200 else None


def check_api_confinement(podman: h.Podman, compose: h.Compose) -> None:
    api = compose.container("api")
    uid = podman("exec", api, "id", "-u").stdout.strip()
    assert uid != "0", "the API runs as root"
    for path in ("/probe", "/usr/local/probe", "/models/probe"):
        write = podman("exec", api, "touch", path, check=False)
        assert write.returncode != 0, f"the API could write {path}"
        assert "Read-only file system" in write.stderr, write.stderr
    podman("exec", api, "touch", "/tmp/probe")  # the tmpfs
    caps = podman("exec", api, "grep", "^CapEff", "/proc/self/status").stdout.split()[-1]
    assert int(caps, 16) == 0, f"effective capabilities {caps}"
    inspect = json.loads(podman("inspect", api).stdout)[0]["HostConfig"]
    assert inspect["ReadonlyRootfs"] is True
    assert "no-new-privileges" in " ".join(inspect["SecurityOpt"])
    assert inspect["RestartPolicy"]["Name"] == "unless-stopped"
    # The healthcheck the compose file declares (podman runs it on demand without systemd).
    podman("healthcheck", "run", api, timeout=30)


def check_api_requests(base: str) -> None:
    images, _ = synthetic_digits(1, seed=3)
    png = h.png_gray(images[0])
    rec = h.http("POST", f"{base}/v1/reconstruct", body=png, headers={"Content-Type": "image/png"})
    assert rec.status == 200, rec.body[:500]
    assert rec.headers["content-type"].startswith("image/png")
    assert h.png_size(rec.body) == (28, 28)
    assert rec.headers["x-model-version"]
    sample = h.http("GET", f"{base}/v1/sample?n=16&seed=1")
    assert sample.status == 200, sample.body[:500]
    assert sample.headers["content-type"].startswith("image/png")
    assert min(h.png_size(sample.body)) >= 28 * 4  # a grid of 16
    again = h.http("GET", f"{base}/v1/sample?n=16&seed=1")
    assert again.body == sample.body, "the same seed gives the same samples"
    bad = h.http("POST", f"{base}/v1/reconstruct", body=b"not an image")
    assert 400 <= bad.status < 500, bad


def train_and_swap(podman: h.Podman, compose: h.Compose, base: str) -> dict[str, Any]:
    """Run the train profile: refused, then forced (version 1), then again (version 2, passing
    the gate against version 1); the running API serves versions 1 then 2, no restart."""
    api = compose.container("api")
    api_started = podman("inspect", "--format", "{{.State.StartedAt}}", api).stdout
    # The training container's confinement: non-root, read-only root, writes /models and /tmp.
    probe = (
        "id -u; touch /models/.probe && rm /models/.probe && touch /tmp/probe && echo writable; "
        "touch /probe 2>&1; touch /data/probe 2>&1; true"
    )
    out = compose(
        "run",
        "--rm",
        "-T",
        "--entrypoint",
        "sh",
        "train",
        "-c",
        probe,
        profile="train",
        timeout=120,
    ).stdout
    lines = out.split("\n")
    assert lines[0].strip() != "0", out
    assert "writable" in out, out
    assert out.count("Read-only file system") == 2, out

    # The quality gate: thirty tiny iterations are far worse than the embedded default model,
    # so the refresh is refused in one line and the API keeps serving the embedded model.
    refused = compose("run", "--rm", "-T", "train", profile="train", timeout=600, check=False)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "refused: new -ELBO" in output, output[-2000:]
    assert "the embedded default model (version 0)" in output and "Traceback" not in output
    assert h.http("GET", f"{base}/v1/models").json()["serving"]["source"] == "embedded"

    figures: dict[str, Any] = {}
    for version in (1, 2):
        t0 = time.monotonic()
        # Version 1 only with --force; version 2, the same run again, passes against it.
        forced = forced_train_command(podman.runner) if version == 1 else []
        run = compose("run", "--rm", "-T", "train", *forced, profile="train", timeout=600)
        figures[f"train_run_{version}_seconds"] = round(time.monotonic() - t0, 1)
        assert f'"version": {version}' in run.stdout, run.stdout[-2000:]

        def serving(v: int = version) -> dict[str, Any] | None:
            models = h.http("GET", f"{base}/v1/models").json()
            s = models["serving"]
            return models if (s["source"], s["version"]) == ("repository", v) else None

        _, seconds = h.wait_for(f"version {version}", serving, timeout=30)
        figures[f"served_{version}_seconds_after_train_exit"] = round(seconds, 2)
        assert seconds < POLL_INTERVAL_S + 10, f"version {version} took {seconds:.1f} s to serve"
        for resp in (
            h.http("GET", f"{base}/v1/sample?n=4&seed=2"),
            h.http("GET", f"{base}/readyz"),
        ):
            assert resp.status == 200
            assert resp.headers["x-model-version"] == str(version), resp.headers
    again = podman("inspect", "--format", "{{.State.StartedAt}}", api).stdout
    assert again == api_started, "the API was restarted"
    return figures


def forced_train_command(runner: h.Runner) -> list[str]:
    """The train service's command as the override resolves it, with --force added."""
    resolved = h.compose_config(
        runner,
        *("-f", str(h.COMPOSE_FILE), "-f", str(h.OVERRIDE_FILE), "--profile", "train"),
        env={"VAE_TEST_PORT": "8000", "VAE_TEST_DATA_DIR": "/tmp", **TRAIN_ENV},
    )
    return [*resolved["services"]["train"]["command"], "--force"]


def compose_down(podman: h.Podman, compose: h.Compose) -> None:
    compose("down", "--volumes", "--timeout", "5", timeout=120)
    label = f"label=io.podman.compose.project={compose.project}"
    assert not podman("ps", "--all", "--quiet", "--filter", label).stdout.strip()
    volumes = podman("volume", "ls", "--quiet").stdout.split()
    assert not [v for v in volumes if v.startswith(compose.project)], volumes
