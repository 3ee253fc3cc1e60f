"""deploy/kubernetes renders with kubectl kustomize, validates strictly against the schemas
of Kubernetes 1.37 (kubernetes-validate, whose schemas ship inside the package: no network),
and holds what docs/kubernetes.md promises; the KServe example validates against the
InferenceService CRD's own schema (KServe v0.20.0, vendored under tests/deploy/schemas)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy import manifests as m

KUBERNETES_VERSION = "1.37.0"
CRD_SCHEMA = Path(__file__).parent / "schemas" / "kserve-v0.20.0-inferenceservice.json"


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_overlay_renders_the_same_with_the_machines_kubectl(overlay: str) -> None:
    """The pinned kubectl renders every overlay; an operator's kubectl (here the machine's,
    when it has one) renders the same objects."""
    pinned = m.rendered(overlay)
    assert "kind: Deployment" in pinned
    machine = shutil.which("kubectl")
    if machine is not None:
        assert list(yaml.safe_load_all(m.rendered(overlay, machine))) == list(
            yaml.safe_load_all(pinned)
        )


def validate(path: Path) -> str:
    return m.run(
        m.tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(path)
    ).stdout


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_every_object_validates_strictly(overlay: str, tmp_path: Path) -> None:
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(m.rendered(overlay))
    out = validate(path)
    kinds = {d["kind"] for d in m.objects(overlay)}
    assert out.count(" passed for resource ") == len(m.objects(overlay)), out
    assert {"Deployment", "Service", "PodDisruptionBudget", "PersistentVolumeClaim"} <= kinds
    assert {"Job", "CronJob", "NetworkPolicy", "ConfigMap"} <= kinds


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    """A misspelt field fails (so a pass above means something)."""
    docs = m.objects("dev")
    deployment = copy.deepcopy(m.find(docs, "Deployment"))
    m.pod_spec(deployment)  # the shape the tests rely on
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(deployment))
    proc = subprocess.run(
        [m.tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0 and "readinessprobe" in proc.stdout + proc.stderr, proc


def test_dev_has_one_replica_and_no_autoscaler() -> None:
    docs = m.objects("dev")
    assert m.find(docs, "Deployment")["spec"]["replicas"] == 1
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]


def test_production_has_three_replicas_scaled_on_cpu() -> None:
    docs = m.objects("production")
    deployment = m.find(docs, "Deployment")
    hpa = m.find(docs, "HorizontalPodAutoscaler")
    assert deployment["spec"]["replicas"] == 3
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] == 3 < hpa["spec"]["maxReplicas"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_api_rolls_out_without_losing_capacity(overlay: str) -> None:
    docs = m.objects(overlay)
    deployment = m.find(docs, "Deployment")
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    spread = m.pod_spec(deployment)["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["kubernetes.io/hostname"]
    assert (
        spread[0]["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    )
    pdb = m.find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_every_pod_is_confined(overlay: str) -> None:
    """Non-root, no token, RuntimeDefault seccomp, read-only root, no capabilities, limits."""
    docs = m.objects(overlay)
    workloads = [d for d in docs if d["kind"] in m.WORKLOAD_KINDS]
    assert len(workloads) == 3
    for doc in workloads:
        pod = m.pod_spec(doc)
        assert pod["automountServiceAccountToken"] is False, doc["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        mounts = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in mounts["tmp"]
    for doc, container in m.containers(docs):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert set(container["resources"]) == {"requests", "limits"}, doc["metadata"]["name"]
        assert {"/tmp", "/models"} <= {v["mountPath"] for v in container["volumeMounts"]}


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_models_are_shared_read_write_many_and_read_only_for_the_api(overlay: str) -> None:
    docs = m.objects(overlay)
    pvc = m.find(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    claim = pvc["metadata"]["name"]
    for doc, container in m.containers(docs):
        volumes = {v["name"]: v for v in m.pod_spec(doc)["volumes"]}
        [mount] = [v for v in container["volumeMounts"] if v["mountPath"] == "/models"]
        assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim
        writer = doc["kind"] != "Deployment"
        assert mount.get("readOnly", False) is not writer, (doc["kind"], mount)


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_the_cronjob_runs_the_jobs_pod(overlay: str) -> None:
    docs = m.objects(overlay)
    job, cron = m.find(docs, "Job"), m.find(docs, "CronJob")
    assert cron["spec"]["jobTemplate"]["spec"]["template"] == job["spec"]["template"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_network_policies(overlay: str) -> None:
    """The API accepts traffic on its port only; training pods accept none."""
    docs = m.objects(overlay)
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    deployment = m.find(docs, "Deployment")
    api = policies["vae-mnist-api"]
    assert api["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert api["policyTypes"] == ["Ingress"]
    [rule] = api["ingress"]
    assert set(rule) == {"ports"}, "no peers listed: any client, on the port only"
    assert [p["port"] for p in rule["ports"]] == ["http"]
    train = policies["vae-mnist-train"]
    job = m.find(docs, "Job")
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert train["podSelector"]["matchLabels"].items() <= labels.items()
    assert train["policyTypes"] == ["Ingress"] and train["ingress"] == []


# ----------------------------------------------------------------------------------------------
# KServe


def crd_validator() -> jsonschema.protocols.Validator:
    """The CRD's structural schema, made strict as the API server's field validation is:
    an object schema with properties accepts no others unless it preserves unknown fields."""
    crd = json.loads(CRD_SCHEMA.read_text())

    def strict(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            for value in node.values():
                strict(value)
        elif isinstance(node, list):
            for value in node:
                strict(value)

    schema = crd["openAPIV3Schema"]
    strict(schema)
    return jsonschema.Draft7Validator(schema)


def test_kserve_example_validates_against_the_crd_schema() -> None:
    doc = m.kserve()
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert doc["kind"] == "InferenceService"
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in crd_validator().iter_errors(doc)]
    assert not errors, errors


def test_the_crd_schema_rejects_a_misspelt_field() -> None:
    doc = m.kserve()
    doc["spec"]["predictor"]["containers"][0]["readinessprobe"] = {}
    doc["spec"]["predictor"]["minReplica"] = 1
    messages = " ".join(e.message for e in crd_validator().iter_errors(doc))
    assert "readinessprobe" in messages and "minReplica" in messages, messages


def test_kserve_example_is_a_v2_custom_predictor_of_the_serve_image() -> None:
    predictor = m.kserve()["spec"]["predictor"]
    [container] = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert {"name": "PROTOCOL", "value": "v2"} in container["env"]
    assert container["image"].split("/")[-1].startswith("vae-mnist-serve:")
    volumes = {v["name"]: v for v in predictor["volumes"]}
    [models] = [v for v in container["volumeMounts"] if v["mountPath"] == "/models"]
    assert models["readOnly"] is True
    claim = m.find(m.objects("production"), "PersistentVolumeClaim")["metadata"]["name"]
    assert volumes[models["name"]]["persistentVolumeClaim"]["claimName"] == claim
