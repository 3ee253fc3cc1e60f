"""The training loop on tiny synthetic data: it learns, it resumes exactly, it writes its files."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch

from tests.mnist_files import synthetic_digits
from training.checkpoint import CheckpointError, load_model
from training.config import TrainConfig
from training.data import binarize
from training.evaluate import validation_terms
from training.loss import elbo_terms, iwae_nll, log_weights
from training.model import VAE
from training.train import train

CFG = TrainConfig.from_preset(
    "tiny", iterations=60, eval_every=20, image_every=30, checkpoint_every=30
)


def tensors(n: int = 600) -> tuple[torch.Tensor, torch.Tensor]:
    images, _ = synthetic_digits(n, seed=3)
    x = binarize(images, 0.5)
    return x[:500], x[500:]


def params(model: VAE) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _interrupted_after(run_dir: Path, done: int, cfg: TrainConfig = CFG) -> float:
    """Train `done` of cfg's iterations as a run stopped there; return its wall seconds.

    Nothing before step `done` depends on cfg.iterations with a constant learning rate, so
    the checkpoint is then marked as the stopped run's.
    """
    train_x, val_x = tensors()
    started = time.perf_counter()
    train(dataclasses.replace(cfg, iterations=done), train_x, val_x, run_dir, progress=False)
    ckpt = run_dir / "checkpoints" / "last.pt"
    payload = torch.load(ckpt, weights_only=False)
    payload["config"]["iterations"] = cfg.iterations  # the stopped run's config was cfg
    torch.save(payload, ckpt)
    return time.perf_counter() - started


def test_seed_preset_is_the_notebook_recipe() -> None:
    cfg = TrainConfig.from_preset("seed")
    assert (cfg.latent_dim, cfg.encoder_hidden, cfg.decoder_hidden) == (64, (128,), (128,))
    assert (cfg.iterations, cfg.batch_size, cfg.learning_rate, cfg.threshold) == (
        20_000,
        100,
        1e-3,
        0.5,
    )
    assert (cfg.objective, cfg.kl_warmup, cfg.lr_schedule, cfg.init_std) == (
        "elbo",
        0,
        "constant",
        0.1,
    )
    model = VAE(cfg)
    assert sum(p.numel() for p in model.parameters()) == 226_448  # 784-128-128 / 64-128-784
    weights = torch.cat(
        [m.weight.flatten() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    )
    assert weights.abs().max() <= 0.2  # truncated at 2 std of 0.1
    assert all(m.bias.abs().max() == 0 for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_loss_goes_down(tmp_path: Path) -> None:
    train_x, val_x = tensors()
    torch.manual_seed(0)
    before = elbo_terms(VAE(CFG), val_x).loss.item()
    result = train(CFG, train_x, val_x, tmp_path, progress=False)
    after = elbo_terms(result.model, val_x).loss.item()
    assert after < 0.8 * before
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in lines if r["kind"] == "train"]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert [r["iteration"] for r in lines if r["kind"] == "validation"] == [20, 40, 60]
    assert {"loss", "reconstruction", "kl", "lr", "it_per_s"} <= set(train_rows[0])


def test_run_writes_images_and_checkpoint(tmp_path: Path) -> None:
    train_x, val_x = tensors()
    train(CFG, train_x, val_x, tmp_path, progress=False)
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert names == [
        "reconstructions_000030.png",
        "reconstructions_000060.png",
        "samples_000030.png",
        "samples_000060.png",
    ]
    model, cfg = load_model(tmp_path / "checkpoints" / "last.pt")
    assert cfg == CFG and model.latent_dim == CFG.latent_dim


def test_same_seed_same_weights(tmp_path: Path) -> None:
    train_x, val_x = tensors()
    a = train(CFG, train_x, val_x, tmp_path / "a", progress=False).model
    b = train(CFG, train_x, val_x, tmp_path / "b", progress=False).model
    c = train(
        dataclasses.replace(CFG, seed=1), train_x, val_x, tmp_path / "c", progress=False
    ).model
    assert torch.equal(params(a), params(b))
    assert not torch.equal(params(a), params(c))


def test_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    train_x, val_x = tensors()
    whole = train(CFG, train_x, val_x, tmp_path / "whole", progress=False).model
    run_dir = tmp_path / "resumed"
    _interrupted_after(run_dir, 30)  # a run killed right after its checkpoint at iteration 30
    resumed = train(CFG, train_x, val_x, run_dir, resume=True, progress=False).model
    assert torch.equal(params(whole), params(resumed))
    iterations = [
        json.loads(x)["iteration"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert iterations == sorted(iterations) and iterations.count(60) == 2  # train + validation


def test_early_stopping_keeps_the_best_weights(tmp_path: Path) -> None:
    train_x, val_x = tensors()
    cfg = dataclasses.replace(
        CFG, iterations=400, eval_every=10, early_stop_patience=1, learning_rate=0.05
    )
    result = train(cfg, train_x, val_x, tmp_path, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = [r["neg_elbo"] for r in rows if r["kind"] == "validation"]
    assert result.stopped_early and result.iterations < 400
    assert val[-1] >= min(val[:-1])  # stopped because the last check did not improve
    assert validation_terms(result.model, val_x).loss.item() == min(val)  # best weights kept


def test_iwae_bound_is_tighter_than_the_elbo() -> None:
    _, val_x = tensors()
    torch.manual_seed(0)
    model = VAE(CFG)
    with torch.no_grad():
        log_w = log_weights(model, val_x, k=64, generator=torch.Generator().manual_seed(0))
        neg_elbo = -log_w.mean().item()
        nll = iwae_nll(log_w).mean().item()
    assert nll < neg_elbo


def test_iwae_objective_trains(tmp_path: Path) -> None:
    train_x, val_x = tensors()
    cfg = dataclasses.replace(CFG, objective="iwae", train_k=5, kl_warmup=10, lr_schedule="cosine")
    result = train(cfg, train_x, val_x, tmp_path, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert train_rows[-1]["lr"] < cfg.learning_rate  # cosine decayed
    assert result.iterations == cfg.iterations


def test_train_seconds_add_up_across_a_resume(tmp_path: Path) -> None:
    train_x, val_x = tensors()
    first_wall = _interrupted_after(tmp_path, 50)
    first = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["seconds"]
    started = time.perf_counter()
    result = train(CFG, train_x, val_x, tmp_path, resume=True, progress=False)
    second_wall = time.perf_counter() - started
    # Both segments count: the 50 iterations before the stop and the 10 after it.
    assert 0 < first <= first_wall
    assert first < result.seconds <= first_wall + second_wall


def test_resume_with_other_flags_names_what_differs(tmp_path: Path) -> None:
    train_x, val_x = tensors()
    _interrupted_after(tmp_path, 30)
    other = dataclasses.replace(CFG, batch_size=10, learning_rate=0.01)
    with pytest.raises(CheckpointError) as err:
        train(other, train_x, val_x, tmp_path, resume=True, progress=False)
    message = str(err.value)
    assert "batch_size: 10 now, 20 in the checkpoint" in message
    assert "learning_rate: 0.01 now, 0.001 in the checkpoint" in message
    assert "decoder_hidden" not in message  # only what differs, not the whole config
