"""The Kubernetes manifests as the tests see them: rendered by kubectl kustomize, parsed.

The tools come from the tool virtual environment (`make .venv-tools/.installed`, pinned in
requirements/tools.txt; DEPLOY_TOOLS_BIN names its bin directory). Without them the tests skip
and say how to get them, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = ("dev", "production")
KSERVE = KUBERNETES / "kserve" / "inferenceservice.yaml"
TOOLS_BIN = Path(os.environ.get("DEPLOY_TOOLS_BIN", REPO / ".venv-tools" / "bin"))
WORKLOAD_KINDS = ("Deployment", "Job", "CronJob")

Doc = dict[str, Any]


def tool(name: str) -> str:
    """The tool venv's `name`; skips (fails under CI=true) when it is not installed."""
    path = TOOLS_BIN / name
    if not path.exists():
        message = f"{path} is missing: run `make .venv-tools/.installed` (requirements/tools.txt)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return str(path)


def run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command; the assertion message carries its output when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc


@cache
def rendered(overlay: str, kubectl: str | None = None) -> str:
    """`kubectl kustomize deploy/kubernetes/overlays/OVERLAY` (the tool venv's kubectl)."""
    binary = kubectl or tool("kubectl")
    return run(binary, "kustomize", str(KUBERNETES / "overlays" / overlay)).stdout


def objects(overlay: str) -> list[Doc]:
    """The rendered overlay's objects."""
    return [doc for doc in yaml.safe_load_all(rendered(overlay)) if doc]


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    """The one object of `kind` (named `name`, or the only one of its kind)."""
    hits = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def pod_spec(doc: Doc) -> Doc:
    """The pod spec of a Deployment, Job or CronJob."""
    spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    return dict(spec["template"]["spec"])


def containers(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """Every (workload, container) of the rendered objects."""
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            for container in pod_spec(doc)["containers"]:
                yield doc, container


def kserve() -> Doc:
    """The KServe InferenceService example."""
    doc = yaml.safe_load(KSERVE.read_text())
    assert isinstance(doc, dict)
    return doc
