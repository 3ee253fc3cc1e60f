"""Anomaly detection with the running service: MNIST digits vs Fashion-MNIST images.

Starts the real service (`python -m service.main`) on a free 127.0.0.1 port serving the
given model version, sends held-out MNIST validation digits and Fashion-MNIST test images
to `POST /v1/score` in multipart batches, and reports the AUROC for telling them apart, of
`anomaly_score` (IWAE NLL per unit of ink) and of the raw IWAE NLL.

    python bench/anomaly_auroc.py --version-dir service/default_model/vae/1 \\
        --mnist-dir ../shared/data/mnist --fashion-dir /usr/share/datasets/fashion-mnist

Fashion-MNIST comes from Debian's `dataset-fashion-mnist` package.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from training.data import DataSource, load_split, train_validation


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U)."""
    scores = np.concatenate([negatives, positives])
    ranks = np.empty(len(scores))
    order = scores.argsort(kind="mergesort")
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average the ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_pos, n_neg = len(positives), len(negatives)
    u = ranks[len(negatives) :].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image, mode="L").save(out, format="PNG")
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(version_dir: Path, repo: Path, port: int) -> subprocess.Popen[bytes]:
    version = json.loads((version_dir / "manifest.json").read_text())["version"]
    shutil.copytree(version_dir, repo / "vae" / str(version))
    env = {
        **os.environ,
        "VAE_MODEL_REPOSITORY": str(repo),
        "VAE_PORT": str(port),
        "VAE_FALLBACK_TO_EMBEDDED": "false",
        "VAE_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen([sys.executable, "-m", "service.main"], env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the service did not become ready in 30 s")


def scores(client: httpx.Client, images: np.ndarray, k: int, batch: int) -> np.ndarray:
    """[N, 2]: each image's anomaly_score and iwae_nll."""
    out: list[tuple[float, float]] = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        files = [("files", (f"{i}.png", png(im), "image/png")) for i, im in enumerate(chunk)]
        r = client.post("/v1/score", params={"k": k, "seed": 0, "preprocess": "none"}, files=files)
        r.raise_for_status()
        out.extend((s["anomaly_score"], s["iwae_nll"]) for s in r.json()["scores"])
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version-dir", type=Path, default=Path("service/default_model/vae/1"))
    parser.add_argument("--mnist-dir", type=Path, default=Path("../shared/data/mnist"))
    parser.add_argument(
        "--fashion-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist")
    )
    parser.add_argument("--images", type=int, default=2_000, help="of each kind")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    mnist = train_validation(load_split(DataSource(args.mnist_dir, download=False), "train"))[1]
    fashion_source = DataSource(
        args.fashion_dir, checksums={}, download=False, expect_standard_counts=False
    )
    fashion = load_split(fashion_source, "test")
    with tempfile.TemporaryDirectory() as repo:
        port = free_port()
        proc = start_service(args.version_dir, Path(repo), port)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
                digits = scores(client, mnist.images[: args.images], args.k, args.batch)
                clothes = scores(client, fashion.images[: args.images], args.k, args.batch)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(
        f"model: {args.version_dir}; k = {args.k}; {len(digits)} MNIST validation digits "
        f"vs {len(clothes)} Fashion-MNIST test images"
    )
    for column, name in enumerate(("anomaly_score", "iwae_nll (raw)")):
        a, b = digits[:, column], clothes[:, column]
        print(
            f"{name}: AUROC {auroc(a, b):.4f}; median MNIST {np.median(a):.3g}, "
            f"Fashion {np.median(b):.3g}"
        )


if __name__ == "__main__":
    main()
