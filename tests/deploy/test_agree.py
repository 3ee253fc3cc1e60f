"""The manifests agree with the code: the port, the probe paths (answered by the real app with
its lifespan running), every VAE_* name is a field of the service's Settings and the
ConfigMap's values are valid settings, the images are the Dockerfile's targets, and the grace
period covers the preStop wait plus the service's own drain."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from fastapi.testclient import TestClient

from service.main import load_settings, server_config
from service.settings import Settings
from tests.deploy import manifests as m

V2_PREFIX = "/v2/"
MARGIN_S = 2  # after the drain: the lifespan's shutdown and the process exit


def configmap(docs: list[m.Doc]) -> dict[str, str]:
    return dict(m.find(docs, "ConfigMap")["data"])


def api_container(docs: list[m.Doc]) -> m.Doc:
    [container] = m.pod_spec(m.find(docs, "Deployment"))["containers"]
    return container


def setting_names(docs: list[m.Doc]) -> set[str]:
    """Every VAE_* name the manifests set: the ConfigMap's keys and any container env."""
    names = {k for k in configmap(docs) if k.startswith("VAE_")}
    for _, container in m.containers(docs):
        names |= {e["name"] for e in container.get("env", []) if e["name"].startswith("VAE_")}
    return names


def pod_server_config(docs: list[m.Doc], monkeypatch: pytest.MonkeyPatch) -> uvicorn.Config:
    """The uvicorn configuration `vae-serve` runs with the ConfigMap as its environment
    (load_settings exits with the service's own message on a bad value)."""
    for key, value in configmap(docs).items():
        monkeypatch.setenv(key, value)
    return server_config(load_settings())


def kserve_container() -> m.Doc:
    [container] = m.kserve()["spec"]["predictor"]["containers"]
    return container


def kserve_env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in kserve_container()["env"]}


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_every_setting_is_a_field_of_settings(overlay: str) -> None:
    fields = {f"VAE_{name.upper()}" for name in Settings.model_fields}
    names = setting_names(m.objects(overlay)) | {n for n in kserve_env() if n.startswith("VAE_")}
    assert names, "no VAE_* setting found in the manifests"
    assert not names - fields, f"not settings of service/settings.py: {sorted(names - fields)}"


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_the_configmap_is_valid_settings_and_matches_the_container(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = m.objects(overlay)
    config = pod_server_config(docs, monkeypatch)
    settings = load_settings()
    container = api_container(docs)
    [port] = container["ports"]
    assert port["containerPort"] == settings.port == config.port
    template = m.find(docs, "Deployment")["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(settings.port)
    assert settings.host == "0.0.0.0", "the pod's port must be reachable from other pods"
    mounts = {v["mountPath"] for v in container["volumeMounts"]}
    assert str(settings.model_repository) in mounts
    service = m.find(docs, "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]
    assert f"EXPOSE {settings.port}" in m.REPO.joinpath("Dockerfile").read_text()


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_grace_period_covers_prestop_and_the_drain(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = m.objects(overlay)
    drain_s = pod_server_config(docs, monkeypatch).timeout_graceful_shutdown
    assert drain_s is not None and drain_s > 0
    pod = m.pod_spec(m.find(docs, "Deployment"))
    assert (
        pod["terminationGracePeriodSeconds"] >= prestop_s(api_container(docs)) + drain_s + MARGIN_S
    )
    assert prestop_s(api_container(docs)) >= 1, "endpoints need time to drop the pod"
    kserve = m.kserve()["spec"]["predictor"]
    kserve_drain = int(kserve_env()["VAE_GRACEFUL_SHUTDOWN_S"])
    grace = kserve["terminationGracePeriodSeconds"]
    assert grace >= prestop_s(kserve_container()) + kserve_drain + MARGIN_S


def prestop_s(container: m.Doc) -> int:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return int(command[1])


def probe_paths(container: m.Doc) -> dict[str, str]:
    return {
        kind: container[kind]["httpGet"]["path"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }


def test_probe_paths_are_the_apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every probe path answers 200 from the real app (lifespan running, embedded model);
    readiness and startup are /readyz, liveness /healthz. The KServe example's v2 paths are
    checked the same way."""
    container = api_container(m.objects("dev"))
    paths = probe_paths(container)
    assert paths == {
        "startupProbe": "/readyz",
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
    }
    monkeypatch.setenv("VAE_MODEL_REPOSITORY", str(tmp_path))  # empty: the embedded model
    app: Any = server_config(load_settings()).app()  # the app factory vae-serve runs
    with TestClient(app) as client:
        for path in {*paths.values(), "/metrics"}:
            assert client.get(path).status_code == 200, path
        kserve_paths = probe_paths(kserve_container())
        assert set(kserve_paths.values()) == {"/v2/health/ready", "/v2/health/live"}
        for path in kserve_paths.values():
            assert client.get(path).status_code == 200, path


def dockerfile_targets() -> set[str]:
    text = m.REPO.joinpath("Dockerfile").read_text()
    return set(re.findall(r"^FROM \S+ AS (\S+)$", text, re.MULTILINE))


def compose_images() -> dict[str, str]:
    """Dockerfile target -> the image name docker-compose.yml builds it as."""
    compose = yaml.safe_load(m.REPO.joinpath("docker-compose.yml").read_text())
    return {s["build"]["target"]: s["image"] for s in compose["services"].values()}


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_images_are_the_dockerfiles_targets(overlay: str) -> None:
    """Each workload runs `vae-mnist-<target>` of a Dockerfile target: the API `serve`,
    training `train`; in dev exactly the names `docker compose build` gives those targets."""
    targets = dockerfile_targets()
    assert {"serve", "train"} <= targets
    expected = {"Deployment": "serve", "Job": "train", "CronJob": "train"}
    for doc, container in m.containers(m.objects(overlay)):
        target = expected[doc["kind"]]
        image = container["image"]
        if overlay == "dev":
            assert image == compose_images()[target], (doc["kind"], image)
        else:
            name = image.rsplit("/", 1)[-1].split(":")[0].split("@")[0]
            assert name == f"vae-mnist-{target}", (doc["kind"], image)
    kserve_image = kserve_container()["image"].rsplit("/", 1)[-1].split(":")[0]
    assert kserve_image == "vae-mnist-serve"


def test_kserve_port_agrees() -> None:
    predictor = m.kserve()["spec"]["predictor"]
    [port] = kserve_container()["ports"]
    assert port["containerPort"] == int(kserve_env()["VAE_PORT"])
    assert predictor["annotations"]["prometheus.io/port"] == kserve_env()["VAE_PORT"]
    probes = probe_paths(kserve_container())
    assert all(
        kserve_container()[kind]["httpGet"]["port"] == port["containerPort"] for kind in probes
    )
