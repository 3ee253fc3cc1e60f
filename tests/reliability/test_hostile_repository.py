"""A hostile or broken model repository cannot stop the service, hang it, make it serve a
second model as version 0, or make GET /v1/models disclose the server's paths.

Whatever reading or validating a version raises rejects that version: at start-up the best
valid version serves, while running the current one keeps serving, and the rejection is
logged once however many polls see it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bench.soak import SEED_MODEL
from service.http.app import create_app
from service.model.repository import RESERVED, ModelRepository, Rejection
from service.settings import Settings
from tests.service.service_helpers import install, metric, polls, versions, wait_for

HANG_S = 60  # a validation still running after this is hung (a FIFO opened for reading)


def publish(repo: Path, version: int, text: Callable[[dict[str, Any]], str]) -> Path:
    """Publish the seed model as `version` with manifest.json's text made by `text`, staged
    and renamed into place as the exporter does."""
    staging = repo / "vae" / f".staging-{version}"
    shutil.copytree(SEED_MODEL, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"] = version
    (staging / "manifest.json").write_text(text(manifest))
    return staging.rename(repo / "vae" / str(version))


def nul_in_a_file_name(manifest: dict[str, Any]) -> str:
    manifest["graphs"]["encoder"]["file"] = "encoder\u0000.onnx"
    return json.dumps(manifest)


def nested_200000_deep(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest)[:-1] + ', "x": ' + "[" * 200_000 + "]" * 200_000 + "}"


def two_mebibytes(manifest: dict[str, Any]) -> str:
    manifest["padding"] = "x" * 2**21
    return json.dumps(manifest)


HOSTILE_MANIFESTS = {
    "nul-in-a-file-name": (nul_in_a_file_name, "graphs.encoder.file must be a plain file name"),
    "nested-200000-deep": (nested_200000_deep, "nests arrays and objects 200001 deep"),
    "two-mebibytes": (two_mebibytes, "manifest.json: larger than the limit of 1048576 bytes"),
}


@pytest.mark.parametrize("case", list(HOSTILE_MANIFESTS))
def test_start_up_with_a_hostile_newest_version_serves_the_previous_one(
    case: str, seed_repo: Path, seed_settings: Settings
) -> None:
    text, reason = HOSTILE_MANIFESTS[case]
    publish(seed_repo, 2, text)
    with TestClient(create_app(seed_settings)) as client:  # used to exit: "startup failed"
        assert client.get("/readyz").json()["model_version"] == "1"
        v2 = versions(client)[2]
        assert v2["status"] == "rejected" and reason in v2["reason"], v2
        assert metric(client, "vae_model_reloads_total", result="failure") == 1


@pytest.mark.parametrize("case", list(HOSTILE_MANIFESTS))
def test_a_hostile_version_published_while_running_is_rejected_and_logged_once(
    case: str, seed_repo: Path, seed_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    text, reason = HOSTILE_MANIFESTS[case]
    with TestClient(create_app(seed_settings)) as client:
        publish(seed_repo, 2, text)
        wait_for(lambda: versions(client).get(2, {}).get("status") == "rejected", what="v2")
        polls(client, 5)
        assert reason in versions(client)[2]["reason"]
        assert client.get("/readyz").json()["model_version"] == "1"
        assert metric(client, "vae_model_reloads_total", result="failure") == 1
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage()[:200] for r in warnings]
    assert "version 2" in warnings[0].getMessage()


# Failure kinds that work as root too: as root, chmod 000 stops nobody, so that case reads
# in a thread whose effective capabilities lack CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH.
def chmod_000(path: Path) -> None:
    path.chmod(0)


def a_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def a_dangling_symlink(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.with_name("gone"))


def a_symlink_loop(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.name)


def a_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def over_the_limit(path: Path) -> None:
    os.truncate(path, 2**29 + 1)  # sparse: nothing is written, and nothing must be read


UNREADABLE = {
    "manifest-chmod-000": ("manifest.json", chmod_000, "manifest.json: cannot read: Permission"),
    "manifest-a-directory": ("manifest.json", a_directory, "not a regular file (a directory)"),
    "manifest-dangling-symlink": ("manifest.json", a_dangling_symlink, "No such file"),
    "manifest-symlink-loop": ("manifest.json", a_symlink_loop, "Too many levels of symbolic"),
    "manifest-a-fifo": ("manifest.json", a_fifo, "manifest.json: not a regular file (a FIFO)"),
    "graph-chmod-000": ("decoder.onnx", chmod_000, "decoder.onnx: cannot read: Permission"),
    "graph-a-fifo": ("decoder.onnx", a_fifo, "decoder.onnx: not a regular file (a FIFO)"),
    "graph-dangling-symlink": ("encoder.onnx", a_dangling_symlink, "No such file"),
    "graph-over-the-limit": ("encoder.onnx", over_the_limit, "larger than the limit of"),
}
ABSOLUTE_PATH = re.compile(r"(^|[\s'\"(:=])/\w")


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_an_unreadable_file_is_a_rejection_whose_reason_names_no_path(
    case: str, seed_repo: Path
) -> None:
    name, make, reason = UNREADABLE[case]
    make(install(seed_repo, SEED_MODEL, 2) / name)
    rejection = validate_without_dac_override(seed_repo)
    assert rejection is not None and rejection.version == 2, "never examined (incomplete?)"
    assert reason in rejection.reason, rejection.reason
    assert str(seed_repo) not in rejection.reason and not ABSOLUTE_PATH.search(rejection.reason)


def validate_without_dac_override(repo: Path) -> Rejection | None:
    """Load the best version in a thread that permission bits bind even when run as root;
    a validation that hangs (a FIFO opened without O_NONBLOCK) fails the test, unblocked."""
    found: list[Rejection | None] = []

    def run() -> None:
        _drop_dac_capabilities()
        repository = ModelRepository(repo, "repository", threads=1)
        runtime, rejections = repository.load_best(repository.scan(), 0)
        assert runtime is not None and runtime.version == 1
        found.append(rejections[0] if rejections else None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_S)
    if thread.is_alive():
        _open_fifos(repo)
        pytest.fail(f"validation hung for {HANG_S} s")
    assert found, "the validation thread failed (see its exception above)"
    return found[0]


def _drop_dac_capabilities() -> None:
    """Clear CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2) from this thread's effective
    set (capget/capset act on the calling thread only); a no-op when not root."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(f, ctypes.c_uint32) for f in ("effective", "permitted", "inheritable")]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    assert libc.capget(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())
    data[0].effective &= ~0b110
    assert libc.capset(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())


def _open_fifos(repo: Path) -> None:
    """Open every FIFO in the repository for writing, and close it: a reader blocked in
    open() then reads end-of-file."""
    for path in repo.rglob("*"):
        if path.is_fifo():
            with contextlib.suppress(OSError):  # no reader waits
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


@pytest.fixture
def started(seed_settings: Settings) -> Iterator[Callable[[], TestClient]]:
    """Starts the app in a thread, so that a start-up that hangs fails the test instead."""
    clients: list[TestClient] = []

    def start() -> TestClient:
        client = TestClient(create_app(seed_settings))
        thread = threading.Thread(target=client.__enter__, daemon=True)
        thread.start()
        thread.join(HANG_S)
        if thread.is_alive():
            _open_fifos(seed_settings.model_repository or Path())
            thread.join(HANG_S)
            pytest.fail(f"start-up hung for {HANG_S} s")
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def test_a_fifo_for_a_graph_does_not_hang_start_up(seed_repo: Path, started: Any) -> None:
    a_fifo(install(seed_repo, SEED_MODEL, 2) / "decoder.onnx")
    client = started()
    assert client.get("/readyz").json()["model_version"] == "1"
    v2 = versions(client)[2]
    assert v2 == {
        "version": 2,
        "source": "repository",
        "status": "rejected",
        "reason": "decoder.onnx: not a regular file (a FIFO)",
    }


def test_a_repository_version_0_is_refused(seed_repo: Path, seed_settings: Settings) -> None:
    """The embedded default model is version 0: a repository's version 0 would be a second
    model behind X-Model-Version: 0."""
    shutil.rmtree(seed_repo / "vae" / "1")
    install(seed_repo, SEED_MODEL, 0)
    with_embedded = seed_settings.model_copy(update={"fallback_to_embedded": True})
    with TestClient(create_app(with_embedded)) as client:
        body = client.get("/v1/models").json()
        assert body["serving"]["source"] == "embedded" and body["serving"]["version"] == 0
        assert body["versions"][0] == {
            "version": 0,
            "source": "repository",
            "status": "rejected",
            "reason": RESERVED,
        }
        install(seed_repo, SEED_MODEL, 1)
        wait_for(lambda: client.get("/v1/models").json()["serving"]["source"] == "repository")
        polls(client, 2)
        # Still listed as refused (not merely "unvalidated") under the version served.
        report = client.get("/v1/models").json()["versions"]
        assert {(v["source"], v["version"], v["status"]) for v in report} == {
            ("repository", 1, "serving"),
            ("repository", 0, "rejected"),
            ("embedded", 0, "available"),
        }
        assert client.get("/readyz").json()["model_version"] == "1"
        assert metric(client, "vae_model_reloads_total", result="failure") == 1
