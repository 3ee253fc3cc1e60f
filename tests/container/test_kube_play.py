"""The rendered `dev` overlay's API Deployment runs under `podman kube play` (podman executes
Kubernetes YAML): the locally built serve image, its ConfigMap, and the model repository
claim as a podman volume holding one published version of a tiny model. The pod answers
/readyz and a reconstruct and serves that version, read-only; then `podman kube down`.

What the test changes in the rendered YAML, and why: host networking (as every container test
here: no bridge) with VAE_HOST=127.0.0.1 and a free port in place of 0.0.0.0:8000, the probes'
named port resolved to that number, and no `ports` list (podman refuses port mappings on the
host network). Nothing else.

With CI=true it must run (a missing tool fails it); elsewhere it skips and says what to install.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.container import harness as h
from tests.container.test_container import ARTIFACTS, SERVE_IMAGE, ok, require_tools
from tests.deploy import manifests as m
from tests.mnist_files import synthetic_digits
from training.config import TrainConfig
from training.model import VAE
from training.publish import publish_version

pytestmark = pytest.mark.container

VERSION = 7  # not the embedded model's version: serving it proves the volume is read


def test_dev_deployment_runs_under_podman_kube_play() -> None:
    require_tools()
    docs = m.objects("dev")  # fails (or skips) here when the tool venv is missing
    runner = h.Runner(ARTIFACTS / "kube-play-commands.log")
    h.sweep_stale_roots(runner)
    root = h.make_root(runner)
    podman = h.Podman(root, runner)
    port = h.free_port()
    play = root / "dev-api.yaml"
    figures: dict[str, Any] = {}
    try:
        h.build_base_image(podman, root)
        figures["serve_build_seconds"] = h.build_target(podman, "serve", SERVE_IMAGE)
        claim = publish_into_volume(podman, docs, root)
        play.write_text(yaml.safe_dump_all(pod_yaml(docs, port)))
        t0 = time.monotonic()
        podman("kube", "play", play, timeout=120)
        figures["play_to_ready_seconds"] = serve_published_version(port)
        figures["play_seconds"] = round(time.monotonic() - t0, 1)
        check_pod(podman, claim)
        podman("kube", "down", play, timeout=120)
        assert not podman("pod", "ps", "--quiet").stdout.strip(), "kube down left a pod"
    finally:
        for name in podman("ps", "--all", "--format", "{{.Names}}", check=False).stdout.split():
            podman("logs", "--tail", "100", name, check=False)
        problems = podman.close()
        (ARTIFACTS / "kube-play-figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    assert not problems, problems


def pod_yaml(docs: list[m.Doc], port: int) -> list[m.Doc]:
    """The Deployment and its ConfigMap, moved to the host network on 127.0.0.1:`port`."""
    deployment = copy.deepcopy(m.find(docs, "Deployment"))
    config = copy.deepcopy(m.find(docs, "ConfigMap"))
    config["data"].update({"VAE_HOST": "127.0.0.1", "VAE_PORT": str(port)})
    pod = deployment["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    [container] = pod["containers"]
    # podman 4.3 turns every containerPort into a port mapping, which it refuses on the host
    # network ("PortMappings can only be used with Bridge or slirp4netns networking").
    [named] = container.pop("ports")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == named["name"]
        container[probe]["httpGet"]["port"] = port
    return [config, deployment]


def publish_into_volume(podman: h.Podman, docs: list[m.Doc], root: Path) -> str:
    """Create the volume podman maps the claim to, and publish a tiny model into it."""
    claim = str(m.find(docs, "PersistentVolumeClaim")["metadata"]["name"])
    podman("volume", "create", claim)
    mountpoint = Path(
        podman("volume", "inspect", "--format", "{{.Mountpoint}}", claim).stdout.strip()
    )
    cfg = TrainConfig.from_preset("tiny", seed=0)
    torch.manual_seed(0)
    publish_version(mountpoint, VAE(cfg), cfg, force=True, version=VERSION)
    assert (mountpoint / "vae" / str(VERSION) / "manifest.json").is_file()
    return claim


def serve_published_version(port: int) -> float:
    """Wait for /readyz; the pod serves the published version; a reconstruct answers."""
    base = f"http://127.0.0.1:{port}"
    ready, seconds = h.wait_for("/readyz", lambda: ok(h.http("GET", f"{base}/readyz")), timeout=90)
    models = h.http("GET", f"{base}/v1/models").json()
    assert (models["serving"]["source"], models["serving"]["version"]) == ("repository", VERSION)
    assert ready.headers["x-model-version"] == str(VERSION)
    images, _ = synthetic_digits(1, seed=4)
    headers = {"Content-Type": "image/png"}
    rec = h.http("POST", f"{base}/v1/reconstruct", body=h.png_gray(images[0]), headers=headers)
    assert rec.status == 200, rec.body[:500]
    assert h.png_size(rec.body) == (28, 28)
    assert rec.headers["x-model-version"] == str(VERSION)
    return round(seconds, 2)


def check_pod(podman: h.Podman, claim: str) -> None:
    """The pod's API container runs as the manifest says: uid 10001, read-only root and
    model volume, a writable /tmp, no capabilities."""
    names = podman("ps", "--format", "{{.Names}}").stdout.split()
    api = [n for n in names if n.endswith("-api")]  # POD-CONTAINER; the other is the infra
    assert len(api) == 1, names
    assert podman("exec", api[0], "id", "-u").stdout.strip() == "10001"
    for path in ("/probe", "/models/probe"):
        write = podman("exec", api[0], "touch", path, check=False)
        assert "Read-only file system" in write.stderr, (path, write.stderr)
    podman("exec", api[0], "touch", "/tmp/probe")
    caps = podman("exec", api[0], "grep", "^CapEff", "/proc/self/status").stdout.split()[-1]
    assert int(caps, 16) == 0, f"effective capabilities {caps}"
    mounts = json.loads(podman("inspect", "--format", "{{json .Mounts}}", api[0]).stdout)
    [models] = [mount for mount in mounts if mount["Destination"] == "/models"]
    assert models["Name"] == claim and models["RW"] is False, models
