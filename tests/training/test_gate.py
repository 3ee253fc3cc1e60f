"""The quality gate on every path that publishes, against what the service would serve."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests.mnist_files import synthetic_digits
from tests.training.cli_args import train_args
from training.cli import main
from training.config import TrainConfig
from training.data import binarize
from training.gate import EMBEDDED_MODEL, PublishRefusedError, find_reference, judge
from training.model import VAE
from training.publish import complete_versions, publish_version
from training.train import train

ROOT = Path(__file__).resolve().parents[2]
CFG = TrainConfig.from_preset("tiny")
EMBEDDED = json.loads((EMBEDDED_MODEL / "vae" / "0" / "manifest.json").read_text())
DATA = {"files": {"train-images-idx3-ubyte.gz": "a" * 64, "train-labels-idx1-ubyte.gz": "b" * 64}}
CLI_DATA = ["--allow-unverified-data", "--no-download", "--no-progress", "--eval-k", "5"]


def figures(neg_elbo: float, images: int = 5_000) -> dict[str, object]:
    return {"split": "validation", "images": images, "neg_elbo": neg_elbo}


def tiny() -> VAE:
    torch.manual_seed(0)
    return VAE(CFG).eval()


def test_the_embedded_model_is_where_the_gate_reads_it() -> None:
    # The gate reads the service's embedded model as files; if it moves, this must fail.
    assert EMBEDDED["version"] == 0 and EMBEDDED["evaluation"]["split"] == "validation"
    reference = find_reference(Path("/nonexistent"))
    assert reference is not None and reference.label.startswith("the embedded default model")


def test_an_empty_repository_compares_with_the_embedded_model(tmp_path: Path) -> None:
    # On the embedded model's own split (the genuine MNIST files), its recorded figure counts.
    same = {"files": EMBEDDED["data"]["files"]}
    old = EMBEDDED["evaluation"]["neg_elbo"]
    with pytest.raises(PublishRefusedError, match=r"vs the embedded default model \(version 0\)"):
        publish_version(tmp_path, tiny(), CFG, evaluation=figures(old + 1.5), data_info=same)
    assert complete_versions(tmp_path) == {}
    passed = publish_version(tmp_path, tiny(), CFG, evaluation=figures(old + 0.5), data_info=same)
    assert passed.gate.startswith("passed")
    assert "recorded on the same validation split" in passed.gate


def test_figures_on_other_data_are_not_compared_as_they_are(tmp_path: Path) -> None:
    # Other files: the embedded model is evaluated on this run's split, or the gate refuses.
    with pytest.raises(PublishRefusedError, match="figures are on other data"):
        judge(tmp_path, figures(10.0), DATA)  # "better" than its recorded 82.85 only on paper
    with pytest.raises(PublishRefusedError, match=r"vs the embedded .*'s 140.00, evaluated now"):
        judge(tmp_path, figures(150.0), DATA, rescore=lambda _: 140.0)
    verdict = judge(tmp_path, figures(150.0), DATA, rescore=lambda _: 149.5)
    assert verdict.startswith("passed")
    assert "evaluated now on this run's validation split" in verdict


def version(repo: Path, number: int, evaluation: dict[str, object] | None) -> None:
    """A published version as the gate reads it: its manifest (no graphs needed)."""
    path = repo / "vae" / str(number)
    path.mkdir(parents=True)
    manifest = {"version": number, "evaluation": evaluation, "data": DATA}
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_version_without_figures_does_not_switch_the_gate_off(tmp_path: Path) -> None:
    version(tmp_path, 1, figures(100.0))
    version(tmp_path, 2, None)  # as `publish` wrote it before: "evaluation": null
    (tmp_path / "vae" / "3").mkdir()  # an abandoned publish: not a version
    with pytest.raises(PublishRefusedError) as refused:
        judge(tmp_path, figures(103.0), DATA)
    assert "vs version 1's 100.00" in str(refused.value)
    assert "newer version(s) 2 have no readable figures" in str(refused.value)
    assert judge(tmp_path, figures(100.5), DATA).startswith("passed")


def test_a_model_without_figures_is_refused_unless_forced(tmp_path: Path) -> None:
    version(tmp_path, 1, figures(100.0))
    with pytest.raises(PublishRefusedError, match="the new model has no figures"):
        judge(tmp_path, None, DATA)
    assert judge(tmp_path, None, DATA, force=True).startswith("not compared, forced")
    with pytest.raises(PublishRefusedError, match="the new model has no figures"):
        publish_version(tmp_path, tiny(), CFG)  # refused before anything is exported
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["1"]


def test_no_reference_at_all_is_refused_before_training(
    tmp_path: Path, mnist_dir: tuple[Path, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    data, _ = mnist_dir
    args = train_args(data, tmp_path, "--embedded-model", str(tmp_path / "no-embedded-model"))
    assert main(args) == 2
    assert "refused before training: the quality gate has nothing to compare with" in caplog.text
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A better (60 iterations) and a worse (3 iterations) checkpoint on synthetic digits."""
    x = binarize(synthetic_digits(700, seed=3)[0], 0.5)
    paths = {}
    for name, iterations in (("better", 60), ("worse", 3)):
        run_dir = tmp_path_factory.mktemp(name)
        cfg = TrainConfig.from_preset("tiny", iterations=iterations)
        train(cfg, x[:500], x[500:], run_dir, progress=False)
        paths[name] = run_dir / "checkpoints" / "last.pt"
    return paths


def test_publish_command_evaluates_then_goes_through_the_gate(
    tmp_path: Path,
    mnist_dir: tuple[Path, dict[str, str]],
    checkpoints: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    data, _ = mnist_dir
    repo = tmp_path / "models"
    publish = ["publish", *CLI_DATA, "--data-dir", str(data), "--model-repository", str(repo)]
    # The better model is still far worse than the embedded one: only --force publishes it.
    assert main([*publish, "--checkpoint", str(checkpoints["better"]), "--force"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["published"]["version"] == 1 and out["gate"].startswith("worse but forced")
    manifest = json.loads((repo / "vae" / "1" / "manifest.json").read_text())
    assert manifest["evaluation"]["iwae_k"] == 5 and manifest["run"]["iterations"] == 60
    # The worse checkpoint is refused against version 1, without a traceback.
    assert main([*publish, "--checkpoint", str(checkpoints["worse"])]) == 2
    assert re.search(r"refused: new -ELBO [\d.]+ vs version 1's", caplog.text)
    assert sorted(complete_versions(repo)) == [1]
    # Forced, it is published with its figures, so the gate stays on for the next one.
    assert main([*publish, "--checkpoint", str(checkpoints["worse"]), "--force"]) == 0
    assert json.loads((repo / "vae" / "2" / "manifest.json").read_text())["evaluation"]


def test_the_compose_job_retrains_the_embedded_models_recipe() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    preset = re.search(r"--preset=\$\{VAE_TRAIN_PRESET:-(\w+)\}", compose)
    iterations = re.search(r"--iterations=\$\{VAE_TRAIN_ITERATIONS:-(\d+)\}", compose)
    assert preset and iterations, "the compose train command has lost its defaults"
    assert preset.group(1) == EMBEDDED["training"]["preset"]
    assert int(iterations.group(1)) == EMBEDDED["training"]["iterations"]
    # The training image carries the embedded model, so the gate can read it there too.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"COPY service/default_model/ (\S+)", dockerfile)
    assert "VAE_EMBEDDED_MODEL=" in dockerfile
