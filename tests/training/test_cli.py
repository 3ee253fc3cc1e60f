"""`vae-train` end to end on tiny synthetic data: train, publish, gate, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training.cli_args import TINY, train_args
from training.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, (json.loads(out) if code == 0 else {})


def test_train_publishes_and_evaluate_reads_it_back(
    tmp_path: Path, mnist_dir: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = mnist_dir
    repo = tmp_path / "models"
    # Thirty iterations cannot match the embedded default model: only --force publishes.
    code, summary = run(capsys, *train_args(data, tmp_path, "--force"))
    assert code == 0
    assert summary["published"] == {"version": 1, "path": str(repo / "vae" / "1")}
    assert "worse but forced" in str(summary["gate"]) and "embedded" in str(summary["gate"])
    manifest = json.loads((repo / "vae" / "1" / "manifest.json").read_text())
    assert manifest["run"]["iterations"] == 30 and manifest["run"]["train_seconds"] > 0
    assert manifest["evaluation"]["iwae_k"] == 5 and manifest["data"]["train_images"] == 200
    for name in ("loss_curves.png", "latents.png", "metrics.jsonl", "summary.json"):
        assert (tmp_path / "run" / name).is_file()
    evaluation = summary["evaluation"]
    assert isinstance(evaluation, dict) and evaluation["iwae_nll"] <= evaluation["neg_elbo"]

    code, onnx_eval = run(
        capsys,
        "evaluate",
        "--model-repository",
        str(repo),
        "--k",
        "5",
        "--data-dir",
        str(data),
        "--allow-unverified-data",
        "--no-download",
    )
    assert code == 0 and onnx_eval["model"] == str(repo / "vae" / "1")
    assert onnx_eval["neg_elbo"] == pytest.approx(evaluation["neg_elbo"], abs=1.0)

    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    code, torch_eval = run(
        capsys,
        "evaluate",
        "--checkpoint",
        str(ckpt),
        "--k",
        "5",
        "--data-dir",
        str(data),
        "--allow-unverified-data",
        "--no-download",
    )
    assert code == 0
    assert torch_eval["neg_elbo"] == pytest.approx(onnx_eval["neg_elbo"], abs=1e-2)


def test_gate_refusal_is_an_error_and_force_publishes(
    tmp_path: Path,
    mnist_dir: tuple[Path, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    data, _ = mnist_dir
    repo = tmp_path / "models"
    common = [*TINY, "--data-dir", str(data), "--model-repository", str(repo)]
    assert run(capsys, "train", *common, "--run-dir", str(tmp_path / "a"), "--force")[0] == 0
    # Three iterations cannot match thirty: the gate (tolerance 0) refuses.
    worse = [
        *common,
        "--iterations",
        "3",
        "--gate-tolerance",
        "0",
        "--run-dir",
        str(tmp_path / "b"),
    ]
    assert main(["train", *worse]) == 2
    assert "refused: new -ELBO" in caplog.text and "--force" in caplog.text
    assert "vs version 1's" in caplog.text
    assert sorted(p.name for p in (repo / "vae").iterdir()) == ["1"]
    code, summary = run(capsys, "train", *worse, "--force", "--overwrite")
    assert code == 0 and summary["published"] == {"version": 2, "path": str(repo / "vae" / "2")}
    assert str(summary["gate"]).startswith("worse but forced")


def test_dry_run_exports_but_does_not_publish(
    tmp_path: Path, mnist_dir: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = mnist_dir
    code, summary = run(
        capsys,
        "train",
        "--dry-run",
        "--preset",
        "tiny",
        "--no-progress",
        "--allow-unverified-data",
        "--no-download",
        "--data-dir",
        str(data),
        "--run-dir",
        str(tmp_path / "dry"),
        "--model-repository",
        str(tmp_path / "m"),
    )
    assert code == 0 and summary["published"] is None and summary["iterations"] == 20
    assert (tmp_path / "dry" / "export" / "encoder.onnx").is_file()
    assert not (tmp_path / "m").exists()


def test_missing_data_is_a_clear_error_naming_every_missing_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "partial"
    data.mkdir()
    assert main(train_args(data, tmp_path, "--no-publish")) == 2
    assert "train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz are not in" in caplog.text


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("train", "evaluate", "publish", "download"))
