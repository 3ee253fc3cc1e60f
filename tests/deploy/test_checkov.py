"""checkov scans the rendered overlays, the KServe example and the Dockerfile: no failed check,
and every skipped one carries its reason next to the resource (a `checkov.io/skipN:
ID=reason` annotation, or a `# checkov:skip=ID: reason` line in the Dockerfile)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.deploy import manifests as m

MIN_REASON = 20  # characters: a reason, not a placeholder


def checkov(*args: str | Path) -> dict[str, Any]:
    """One framework's results; --skip-download keeps it offline (no platform, no updates)."""
    out = m.run(
        m.tool("checkov"), "--skip-download", "-o", "json", *map(str, args), timeout=300
    ).stdout
    report = json.loads(out)
    assert isinstance(report, dict), out[:500]
    return report


def assert_clean(report: dict[str, Any]) -> None:
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert not failed and summary["failed"] == 0, failed
    assert summary["parsing_errors"] == 0, summary
    assert summary["passed"] > 0, summary
    for check in report["results"]["skipped_checks"]:
        reason = (check.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason.strip()) >= MIN_REASON, (check["check_id"], check["resource"], reason)


def test_manifests_pass_checkov(tmp_path: Path) -> None:
    for overlay in m.OVERLAYS:
        (tmp_path / f"{overlay}.yaml").write_text(m.rendered(overlay))
    shutil.copy(m.KSERVE, tmp_path / "kserve.yaml")
    report = checkov("--framework", "kubernetes", "-d", tmp_path)
    assert_clean(report)
    resources = {c["resource"] for c in report["results"]["passed_checks"]}
    assert {"Deployment.vae-mnist.vae-mnist-api", "Job.vae-mnist.vae-mnist-train"} <= resources


def test_dockerfile_passes_checkov() -> None:
    assert_clean(checkov("--framework", "dockerfile", "-f", m.REPO / "Dockerfile"))
