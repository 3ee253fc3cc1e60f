"""The service never serves a version whose files do not match its manifest, including files
that change on disk after the version was validated, or while it is being validated."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from fastapi.testclient import TestClient

from bench.soak import SEED_MODEL
from service.http.app import create_app
from service.model.repository import ModelRepository
from service.settings import Settings
from tests.service import service_samples as samples
from tests.service.service_helpers import install, polls

DIGIT, PNG = samples.digit_png(), {"content-type": "image/png"}


def test_overwriting_the_served_files_does_not_change_what_is_served(
    seed_repo: Path, seed_settings: Settings
) -> None:
    served_dir = seed_repo / "vae" / "1"
    with TestClient(create_app(seed_settings)) as client:
        sample = client.get("/v1/sample?n=8&seed=3").content
        encoded = client.post("/v1/encode", content=DIGIT, headers=PNG).json()["mu"]
        # In place, as a careless copy or a failing disk would: garbage and a truncated graph.
        (served_dir / "encoder.onnx").write_bytes(b"not a graph")
        decoder = served_dir / "decoder.onnx"
        decoder.write_bytes(decoder.read_bytes()[:1000])
        polls(client, 2)
        # The runtime holds sessions built from the bytes it verified: it serves exactly those.
        assert client.get("/v1/sample?n=8&seed=3").content == sample
        assert client.get("/readyz").json()["model_version"] == "1"
        assert client.post("/v1/encode", content=DIGIT, headers=PNG).json()["mu"] == encoded
    # A restart validates from disk again, and refuses what no longer matches the manifest.
    with TestClient(create_app(seed_settings)) as client:
        assert client.get("/readyz").status_code == 503
        (v1,) = client.get("/v1/models").json()["versions"]
        assert v1["status"] == "rejected" and "sha256" in v1["reason"]


def test_a_graph_that_changes_while_it_is_validated_is_loaded_whole_or_refused(
    seed_repo: Path,
) -> None:
    """The sha256 and the session come from one read of the file, so there is no moment at
    which a file that passed the check is then loaded in another state."""
    version_dir = install(seed_repo, SEED_MODEL, 2)
    graph = version_dir / "encoder.onnx"
    states = [graph.read_bytes(), b"\x08\x07" + os.urandom(4000)]  # the real one, and junk
    stop = threading.Event()

    def flip() -> None:  # whole-file replacements, as a publisher's rename gives
        i = 0
        while not stop.is_set():
            i += 1
            (version_dir / ".next").write_bytes(states[i % 2])
            (version_dir / ".next").replace(graph)

    flipper = threading.Thread(target=flip)
    flipper.start()
    outcomes: list[str] = []
    try:
        for _ in range(40):
            repository = ModelRepository(seed_repo, "repository", threads=1)
            runtime, rejections = repository.load_best(repository.scan(), above=1)
            if runtime is not None:
                outcomes.append(f"loaded {runtime.version}")
            # A listing that raced a rename counts the version incomplete until the next scan.
            outcomes += [r.reason for r in rejections] or (["not yet"] if runtime is None else [])
    finally:
        stop.set()
        flipper.join()
    refused = {r for r in outcomes if r.startswith("encoder.onnx: sha256 is")}
    assert set(outcomes) <= {"loaded 2", "not yet"} | refused, outcomes
