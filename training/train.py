"""The training loop: progress bar, metrics log, periodic images, checkpoints and resume."""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm import tqdm

from training import images, plots
from training.config import TrainConfig
from training.data import BatchStream
from training.loss import ElboTerms, elbo_terms, iwae_loss
from training.model import VAE

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"
EVAL_SEED = 1234  # fixed noise for validation figures, so curves compare like with like
N_ROWS = 10  # images in the originals/reconstructions strip
N_SAMPLES = 64  # images in the sample grid


@dataclass
class RunState:
    """Everything a checkpoint must carry for a resumed run to match an uninterrupted one."""

    model: VAE
    optimizer: torch.optim.Adam
    scheduler: torch.optim.lr_scheduler.LRScheduler
    stream: BatchStream
    noise: torch.Generator
    iteration: int = 0
    best_neg_elbo: float = float("inf")
    best_iteration: int = 0
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    evals_since_best: int = 0


@dataclass(frozen=True)
class TrainResult:
    model: VAE
    iterations: int
    seconds: float
    stopped_early: bool


def build_state(cfg: TrainConfig, train_x: torch.Tensor) -> RunState:
    """A fresh run: global seed for the weights, local generators for data and noise."""
    torch.manual_seed(cfg.seed)
    model = VAE(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    if cfg.lr_schedule == "cosine":
        scheduler: torch.optim.lr_scheduler.LRScheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.iterations)
        )
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    stream = BatchStream(train_x, cfg.batch_size, seed=cfg.seed + 1)
    noise = torch.Generator().manual_seed(cfg.seed + 2)
    return RunState(model, optimizer, scheduler, stream, noise)


def save_checkpoint(path: Path, state: RunState, cfg: TrainConfig) -> None:
    """Written to a temporary name and renamed, so `last.pt` is always whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": cfg.to_dict(),
        "iteration": state.iteration,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "stream": state.stream.state_dict(),
        "noise": state.noise.get_state(),
        "best": {
            "neg_elbo": state.best_neg_elbo,
            "iteration": state.best_iteration,
            "weights": state.best_weights,
            "evals_since_best": state.evals_since_best,
        },
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, cfg: TrainConfig, train_x: torch.Tensor) -> RunState:
    payload = torch.load(path, weights_only=False)
    saved = TrainConfig.from_dict(payload["config"])
    if saved != cfg:
        raise ValueError(
            f"checkpoint {path} was made with a different config; resume with the same flags "
            f"(checkpoint: {saved.to_dict()})"
        )
    state = build_state(cfg, train_x)
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    state.stream.load_state_dict(payload["stream"])
    state.noise.set_state(payload["noise"])
    state.iteration = int(payload["iteration"])
    best = payload["best"]
    state.best_neg_elbo, state.best_iteration = float(best["neg_elbo"]), int(best["iteration"])
    state.best_weights, state.evals_since_best = best["weights"], int(best["evals_since_best"])
    return state


def load_model(path: Path) -> tuple[VAE, TrainConfig]:
    """The model (best weights when early stopping kept some) and config of a checkpoint."""
    payload = torch.load(path, weights_only=False)
    cfg = TrainConfig.from_dict(payload["config"])
    model = VAE(cfg)
    model.load_state_dict(payload["best"]["weights"] or payload["model"])
    return model.eval(), cfg


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Drop lines logged after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    keep = [
        line for line in path.read_text().splitlines() if json.loads(line)["iteration"] <= iteration
    ]
    path.write_text("".join(f"{line}\n" for line in keep))


@torch.no_grad()
def validation_terms(model: VAE, val_x: torch.Tensor) -> ElboTerms:
    """One-sample -ELBO on the whole validation set, with fixed noise."""
    model.eval()
    terms = elbo_terms(model, val_x, torch.Generator().manual_seed(EVAL_SEED))
    model.train()
    return terms


@torch.no_grad()
def write_images(model: VAE, val_x: torch.Tensor, out_dir: Path, iteration: int) -> None:
    """Originals beside reconstructions, and a grid of samples from fixed z."""
    model.eval()
    originals = val_x[:N_ROWS]
    mu, _ = model.encode(originals)
    recon = torch.sigmoid(model.decode(mu))
    z = torch.randn(N_SAMPLES, model.latent_dim, generator=torch.Generator().manual_seed(0))
    samples = torch.sigmoid(model.decode(z))
    model.train()
    images.save_rows(
        out_dir / f"reconstructions_{iteration:06d}.png", originals.numpy(), recon.numpy()
    )
    images.save_grid(out_dir / f"samples_{iteration:06d}.png", samples.numpy(), 8)


def _step(cfg: TrainConfig, state: RunState, x: torch.Tensor) -> ElboTerms:
    kl_weight = min(1.0, state.iteration / cfg.kl_warmup) if cfg.kl_warmup else 1.0
    if cfg.objective == "iwae":
        terms = iwae_loss(state.model, x, cfg.train_k, state.noise)
    else:
        terms = elbo_terms(state.model, x, state.noise, kl_weight)
    state.optimizer.zero_grad(set_to_none=True)
    terms.loss.backward()
    state.optimizer.step()
    state.scheduler.step()
    return terms


class _Running:
    """Sums of the loss terms since the last log line."""

    def __init__(self) -> None:
        self.n, self.loss, self.recon, self.kl = 0, 0.0, 0.0, 0.0

    def add(self, terms: ElboTerms) -> None:
        self.n += 1
        self.loss += terms.loss.item()
        self.recon += terms.reconstruction.item()
        self.kl += terms.kl.item()

    def means(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"loss": self.loss / n, "reconstruction": self.recon / n, "kl": self.kl / n}


def _log(stream: TextIO, row: dict[str, Any]) -> None:
    stream.write(json.dumps(row) + "\n")
    stream.flush()


def _evaluate(cfg: TrainConfig, state: RunState, val_x: torch.Tensor, metrics: TextIO) -> bool:
    """Log validation -ELBO, track the best weights; True when early stopping says stop."""
    terms = validation_terms(state.model, val_x)
    neg_elbo = terms.loss.item()
    _log(metrics, {
        "kind": "validation", "iteration": state.iteration, "neg_elbo": neg_elbo,
        "reconstruction": terms.reconstruction.item(), "kl": terms.kl.item(),
    })  # fmt: skip
    if neg_elbo < state.best_neg_elbo:
        state.best_neg_elbo, state.best_iteration, state.evals_since_best = (
            neg_elbo,
            state.iteration,
            0,
        )
        if cfg.early_stop_patience:
            state.best_weights = copy.deepcopy(state.model.state_dict())
        return False
    state.evals_since_best += 1
    return bool(cfg.early_stop_patience) and state.evals_since_best >= cfg.early_stop_patience


def train(
    cfg: TrainConfig,
    train_x: torch.Tensor,
    val_x: torch.Tensor,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train `cfg.iterations` steps on binarised train_x [N, 784], writing into run_dir."""
    torch.set_num_threads(cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt, metrics_path = run_dir / "checkpoints" / CHECKPOINT, run_dir / "metrics.jsonl"
    if resume and ckpt.exists():
        state = load_checkpoint(ckpt, cfg, train_x)
        _truncate_metrics(metrics_path, state.iteration)
        log.info("resumed from %s at iteration %d", ckpt, state.iteration)
    else:
        state = build_state(cfg, train_x)
        metrics_path.unlink(missing_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    stopped_early = False
    running, start, t_log = _Running(), time.perf_counter(), time.perf_counter()
    bar = tqdm(
        total=cfg.iterations, initial=state.iteration, disable=not progress,
        mininterval=0.5, unit="it", dynamic_ncols=True,
    )  # fmt: skip
    with metrics_path.open("a") as metrics, bar:
        state.model.train()
        while state.iteration < cfg.iterations and not stopped_early:
            running.add(_step(cfg, state, state.stream.next()))
            state.iteration += 1
            it = state.iteration
            if it % cfg.log_every == 0 or it == cfg.iterations:
                now = time.perf_counter()
                means = running.means()
                _log(metrics, {
                    "kind": "train", "iteration": it, **means,
                    "lr": state.scheduler.get_last_lr()[0],
                    "it_per_s": running.n / max(now - t_log, 1e-9),
                })  # fmt: skip
                bar.set_postfix(
                    loss=f"{means['loss']:.2f}",
                    recon=f"{means['reconstruction']:.2f}",
                    kl=f"{means['kl']:.2f}",
                    refresh=False,
                )
                bar.update(running.n)
                running, t_log = _Running(), now
            if it % cfg.eval_every == 0 or it == cfg.iterations:
                stopped_early = _evaluate(cfg, state, val_x, metrics)
            if it % cfg.image_every == 0 or it == cfg.iterations:
                write_images(state.model, val_x, run_dir / "images", it)
            if it % cfg.checkpoint_every == 0 or it == cfg.iterations or stopped_early:
                save_checkpoint(ckpt, state, cfg)
    seconds = time.perf_counter() - start
    if state.best_weights:
        state.model.load_state_dict(state.best_weights)
        log.info("keeping the best weights, from iteration %d", state.best_iteration)
    return TrainResult(state.model.eval(), state.iteration, seconds, stopped_early)


@torch.no_grad()
def final_figures(model: VAE, val_x: torch.Tensor, val_labels: torch.Tensor, run_dir: Path) -> None:
    """Loss curves and the 2-D latent map, written beside the metrics."""
    plots.loss_curves(run_dir / "metrics.jsonl", run_dir / "loss_curves.png")
    mu, _ = model.eval().encode(val_x)
    plots.latent_map(mu.numpy(), val_labels.numpy(), run_dir / "latents.png")
