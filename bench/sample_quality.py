"""Do the samples look like digits? Judged by an MNIST classifier of the project's own.

    python bench/sample_quality.py [--model-dir DIR] [--data-dir ../shared/data/mnist]
        [--samples 2000] [--per-digit 500] [--classifier runs/sample-quality/classifier.pt]

A small CNN is trained on the training split (the first 55,000 images; about a minute on two
cores, then kept at --classifier) and checked on the validation split (the last 5,000). The
served version (the embedded default model, or --model-dir) is loaded as the service loads it
and sampled through the service's own code (ModelRuntime.sample, the route's prior and
digit), with fixed seeds. Reported:

- confident fraction: the share of images the classifier labels with probability >= 0.9,
  for the model's reconstructions of the validation images (the decoder at its best), and
  for samples under each prior (standard N(0, I), fitted) at temperatures 1 and 0.8;
- the class histogram of the default prior's samples at temperature 1;
- for `digit=d` samples (temperature 1): the share the classifier labels d, per digit.

Images are the decoder's Bernoulli means (what the PNGs show), as grey levels in [0, 1].
With --pictures DIR it also writes the README's pictures there, as the API renders them:
default-digits.png (row d: ten `digit=d` samples) and default-priors.png (64 samples from
the standard prior, left, and from the fitted one, right; the same seed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.images.grid import render
from service.model.density import DIGITS
from service.model.loader import load_runtime
from service.model.manifest import read_manifest
from service.model.runtime import ModelRuntime, Prior
from training.data import DataSource, load_split, train_validation

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "service" / "default_model" / "vae" / "0"
CONFIDENT = 0.9
TEMPERATURES = (1.0, 0.8)


def classifier() -> nn.Module:
    """Two conv layers and two dense ones: ~99% on held-out MNIST after two epochs."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 5 * 5, 128),
        nn.ReLU(),
        nn.Linear(128, DIGITS),
    )


def train_classifier(x: torch.Tensor, y: torch.Tensor, epochs: int = 2) -> nn.Module:
    torch.manual_seed(0)
    net = classifier()
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    for epoch in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            batch = order[i : i + 128]
            loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        print(f"classifier: epoch {epoch + 1}/{epochs}, last batch loss {loss.item():.4f}")
    return net.eval()


@torch.no_grad()
def probabilities(net: nn.Module, images: np.ndarray) -> np.ndarray:
    """Class probabilities [N, 10] for grey images [N, 784] in [0, 1]."""
    x = torch.from_numpy(images.astype(np.float32))
    return torch.cat([net(x[i : i + 2000]).softmax(1) for i in range(0, len(x), 2000)]).numpy()


def confident(probs: np.ndarray) -> float:
    return float((probs.max(axis=1) >= CONFIDENT).mean())


def load_classifier(path: Path, source: DataSource) -> tuple[nn.Module, float]:
    """The cached classifier, or one trained now; with its validation accuracy."""
    train, validation = train_validation(load_split(source, "train"))
    x_val = torch.from_numpy(validation.images.reshape(len(validation), -1) / 255.0).float()
    if path.exists():
        net = classifier()
        net.load_state_dict(torch.load(path, weights_only=True))
        net.eval()
    else:
        x = torch.from_numpy(train.images.reshape(len(train), -1) / 255.0).float()
        net = train_classifier(x, torch.from_numpy(train.labels.astype(np.int64)))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), path)
    accuracy = float((probabilities(net, x_val.numpy()).argmax(1) == validation.labels).mean())
    return net, accuracy


def measure(runtime: ModelRuntime, net: nn.Module, images: np.ndarray, args: argparse.Namespace):
    """Every figure the module docstring lists, as a dict."""
    report: dict[str, object] = {"version": runtime.version}
    x = (images.reshape(len(images), -1) >= 128).astype(np.float32)  # binarised at 0.5
    report["reconstructions_confident"] = confident(
        probabilities(net, runtime.reconstruct_mean(x)[2])
    )
    priors: list[Prior] = ["standard"] + (["fitted"] if runtime.density is not None else [])
    rows = {}
    for prior in priors:
        for temperature in TEMPERATURES:
            _, samples = runtime.sample(args.samples, temperature, np.random.default_rng(1), prior)
            probs = probabilities(net, samples)
            rows[f"{prior} T={temperature:g}"] = confident(probs)
            if temperature == 1.0 and prior == runtime.default_prior:
                counts = np.bincount(probs.argmax(1), minlength=DIGITS)
                report["default_histogram"] = (counts / counts.sum()).round(4).tolist()
    report["confident"] = rows
    if runtime.density is not None:
        agreement = []
        for digit in range(DIGITS):
            _, samples = runtime.sample(
                args.per_digit, 1.0, np.random.default_rng(100 + digit), "fitted", digit
            )
            agreement.append(float((probabilities(net, samples).argmax(1) == digit).mean()))
        report["digit_agreement"] = agreement
        report["digit_agreement_mean"] = float(np.mean(agreement))
    return report


def pictures(runtime: ModelRuntime, directory: Path) -> None:
    """The README's pictures of the fitted density, rendered as GET /v1/sample renders."""
    shape = runtime.manifest.image_shape
    rows = [
        runtime.sample(10, 1.0, np.random.default_rng(digit), "fitted", digit)[1]
        for digit in range(DIGITS)
    ]
    (directory / "default-digits.png").write_bytes(render(np.concatenate(rows), shape, 10, 2))
    grids = [
        runtime.sample(64, 1.0, np.random.default_rng(7), prior)[1]
        for prior in ("standard", "fitted")
    ]
    side_by_side = np.concatenate([g.reshape(8, 8, -1) for g in grids], axis=1).reshape(128, -1)
    (directory / "default-priors.png").write_bytes(render(side_by_side, shape, 16, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=EMBEDDED, help="a version directory")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--samples", type=int, default=2000, help="per prior and temperature")
    parser.add_argument("--per-digit", type=int, default=500)
    parser.add_argument(
        "--classifier", type=Path, default=ROOT / "runs" / "sample-quality" / "classifier.pt"
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--pictures", type=Path, help="write the README's pictures here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    source = DataSource(directory=args.data_dir, download=False)
    net, accuracy = load_classifier(args.classifier, source)
    _, validation = train_validation(load_split(source, "train"))
    manifest = read_manifest(args.model_dir)
    runtime = load_runtime(args.model_dir, manifest, threads=2, source="repository")
    report = {
        "classifier_validation_accuracy": accuracy,
        **measure(runtime, net, validation.images, args),
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.pictures and runtime.density is not None:
        pictures(runtime, args.pictures)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
