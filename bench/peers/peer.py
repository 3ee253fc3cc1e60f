"""TorchServe beside vae-serve: a model archive of the seed checkpoint, and a running server.

TorchServe lives in its own virtual environment, `.venv-peers` (`make .venv-peers/.installed`),
so that it never enters the project's. The archive holds the checkpoint's weights (the same
weights `make seed-model` published as ONNX), `model.py`, `handler.py` and the published
version's manifest.json (for the binarisation threshold).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from harness import Server, ServerFailed, free_port, spawn, wait_ready

PEERS = Path(__file__).resolve().parent
ROOT = PEERS.parents[1]
VENV = ROOT / ".venv-peers"
CHECKPOINT = ROOT / "runs" / "seed" / "checkpoints" / "last.pt"
REPOSITORY = ROOT / "models-seed"
SEED_WIDTHS = {"latent_dim": 64, "encoder_hidden": [128], "decoder_hidden": [128]}
MODEL = "vae"


def require_setup() -> None:
    """Exit with one line saying what is missing."""
    if not (VENV / "bin" / "torchserve").exists():
        sys.exit(f"{VENV}/bin/torchserve not found: run `make .venv-peers/.installed`")
    if not CHECKPOINT.exists() or not newest_version().exists():
        sys.exit(f"{CHECKPOINT} or {REPOSITORY}/vae/<version> missing: run `make seed-model`")


def newest_version() -> Path:
    """The version directory vae-serve serves from REPOSITORY: the highest number."""
    versions = [p for p in (REPOSITORY / MODEL).glob("*") if p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name), default=REPOSITORY / MODEL / "none")


def build_archive(store: Path) -> Path:
    """`store`/vae.mar from the seed checkpoint (its best weights when it kept some, as
    `vae-train` publishes them)."""
    import torch  # the project's environment has torch; only this step needs it

    from training.checkpoint import load_model

    model, cfg = load_model(CHECKPOINT)
    widths = {key: cfg.to_dict()[key] for key in SEED_WIDTHS}
    if widths != SEED_WIDTHS:
        sys.exit(f"{CHECKPOINT} is not the seed architecture ({widths}); run `make seed-model`")
    # training's keys are encoder.net.0.weight ...; model.py's are encoder.0.weight ...
    weights = {key.replace(".net.", "."): v for key, v in model.state_dict().items()}
    store.mkdir(parents=True, exist_ok=True)
    torch.save(weights, store / "weights.pt")
    archiver = [
        str(VENV / "bin" / "torch-model-archiver"),
        *("--model-name", MODEL, "--version", "1", "--export-path", str(store), "--force"),
        *("--model-file", str(PEERS / "model.py"), "--handler", str(PEERS / "handler.py")),
        *("--serialized-file", str(store / "weights.pt")),
        *("--extra-files", str(newest_version() / "manifest.json")),
    ]
    subprocess.run(archiver, check=True)
    return store / f"{MODEL}.mar"


@contextlib.contextmanager
def running(workers: int, store: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """TorchServe with `workers` Python workers on free loopback ports, all of them ready.

    Started in the foreground the way its docs show, with bench/peers/config.properties and
    log4j2.xml; its pid file, logs and unpacked model go to a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="vae-peers-") as scratch:
        port, management, metrics = free_port(), free_port(), free_port()
        environment = {
            **os.environ,
            "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{port}",
            "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{management}",
            "TS_METRICS_ADDRESS": f"http://127.0.0.1:{metrics}",
            "TS_GRPC_INFERENCE_PORT": str(free_port()),
            "TS_GRPC_MANAGEMENT_PORT": str(free_port()),
            "TS_DEFAULT_WORKERS_PER_MODEL": str(workers),
            "TMPDIR": scratch,  # its pid file lives there: one TorchServe per directory
            "TEMP": scratch,  # the JVM's temporary directory: unpacked models, worker sockets
            "LOG_LOCATION": scratch,
            "METRICS_LOCATION": scratch,
            **(env or {}),
        }
        server = spawn(_command(store), environment, port, cwd=Path(scratch))
        try:
            wait_ready(server, "/ping", timeout_s=120, poll_s=0.2)
            _wait_workers(server, f"http://127.0.0.1:{management}", workers)
            yield server
        finally:
            server.stop()


def _wait_workers(server: Server, management: str, workers: int, timeout_s: float = 120) -> None:
    """Wait until the model has `workers` READY workers: /ping answers before they are."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        with contextlib.suppress(OSError):  # the management API may not listen yet
            with urllib.request.urlopen(f"{management}/models/{MODEL}", timeout=5) as response:
                (description,) = json.load(response)
            if sum(w["status"] == "READY" for w in description["workers"]) == workers:
                return
        if server.process.poll() is not None:
            break
        time.sleep(0.2)
    raise ServerFailed(f"TorchServe's {workers} workers not ready:\n{server.log_tail()}")


def _command(store: Path) -> list[str]:
    return [
        str(VENV / "bin" / "torchserve"),
        *("--start", "--foreground", "--ncs"),
        *("--ts-config", str(PEERS / "config.properties")),
        *("--log-config", str(PEERS / "log4j2.xml")),
        *("--model-store", str(store), "--models", f"{MODEL}={MODEL}.mar"),
    ]
