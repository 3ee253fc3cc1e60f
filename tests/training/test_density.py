"""The latent density: fitted after training, published with the version, served by it; and
`vae-train fit-density` for a version published without one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from service.model.loader import load_runtime
from service.model.manifest import read_manifest
from tests.training.cli_args import train_args
from tests.training.test_cli import run
from training.density import fit_density

DATA_FLAGS = ["--allow-unverified-data", "--no-download"]


def test_the_number_of_components_is_chosen_on_the_validation_codes() -> None:
    """Three separated clusters: one component fits the held-out codes far worse than three,
    and the per-digit Gaussians are each digit's codes' mean and covariance."""
    rng = np.random.default_rng(0)
    centres = np.array([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0]])

    def codes(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 3, n)
        return centres[labels] + rng.normal(0, 0.5, (n, 2)), labels

    train, labels = codes(3000)
    validation, _ = codes(1000)
    fit = fit_density(train, labels, validation, candidates=(1, 3))
    scores = fit.summary["validation_log_likelihood"]
    assert fit.summary["components"] == 3 and scores["3"] > scores["1"] + 1
    assert fit.summary["classes_without_codes"] == list(range(3, 10))
    means = fit.arrays["class_means"]
    np.testing.assert_allclose(means[:3], centres, atol=0.1)
    factor = fit.arrays["class_cholesky"][1]
    np.testing.assert_allclose(
        factor @ factor.T, np.cov(train[labels == 1], rowvar=False) + 1e-4 * np.eye(2), rtol=1e-4
    )
    assert np.isclose(fit.arrays["mixture_weights"].sum(), 1, atol=1e-6)


def test_training_publishes_the_density_and_the_service_samples_it(
    tmp_path: Path, mnist_dir: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = mnist_dir
    code, _ = run(capsys, *train_args(data, tmp_path, "--force"))
    assert code == 0
    version_dir = tmp_path / "models" / "vae" / "1"
    entry = json.loads((version_dir / "manifest.json").read_text())["density"]
    blob = (version_dir / "density.npz").read_bytes()
    assert entry["sha256"] == hashlib.sha256(blob).hexdigest() and entry["bytes"] == len(blob)
    assert entry["file"] == "density.npz" and entry["training_codes"] == 200
    assert str(entry["components"]) in entry["validation_log_likelihood"]

    runtime = load_runtime(version_dir, read_manifest(version_dir), threads=1, source="repository")
    assert runtime.density is not None and runtime.default_prior == "fitted"
    z, probs = runtime.sample(5, 1.0, np.random.default_rng(0), "fitted", digit=4)
    assert z.shape == (5, 8) and probs.shape == (5, 784)


def test_fit_density_adds_a_density_to_a_version_without_one(
    tmp_path: Path, mnist_dir: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """The embedded default model's way to gain one: same graphs, a density file, a manifest
    that lists it; a second run refuses to replace it."""
    data, _ = mnist_dir
    assert run(capsys, *train_args(data, tmp_path, "--force"))[0] == 0
    version_dir = tmp_path / "models" / "vae" / "1"
    manifest = json.loads((version_dir / "manifest.json").read_text())
    del manifest["density"]
    (version_dir / "density.npz").unlink()
    (version_dir / "manifest.json").write_text(json.dumps(manifest))
    graphs = {p.name: p.read_bytes() for p in version_dir.glob("*.onnx")}

    argv = ["fit-density", "--version-dir", str(version_dir), "--data-dir", str(data)]
    code, entry = run(capsys, *argv, *DATA_FLAGS)
    assert code == 0 and entry["file"] == "density.npz"
    assert {p.name: p.read_bytes() for p in version_dir.glob("*.onnx")} == graphs
    after = json.loads((version_dir / "manifest.json").read_text())
    assert after["density"] == entry and after["graphs"] == manifest["graphs"]
    runtime = load_runtime(version_dir, read_manifest(version_dir), threads=1, source="repository")
    assert runtime.density is not None

    assert run(capsys, *argv, *DATA_FLAGS)[0] != 0  # already has one


@pytest.mark.parametrize("document", ['{"format": "x"}', "[1]"])
def test_fit_density_on_what_is_not_a_version_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    document: str,
) -> None:
    (tmp_path / "manifest.json").write_text(document)
    argv = ["fit-density", "--version-dir", str(tmp_path), "--data-dir", str(tmp_path)]
    assert run(capsys, *argv, *DATA_FLAGS)[0] == 2
    assert "is not a published version's manifest" in caplog.text
