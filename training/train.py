"""The training loop: progress, metrics log, periodic images, checkpoints, resume, and a
clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from training import images, plots
from training.checkpoint import RunState, build_state, load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.evaluate import validation_terms
from training.interrupt import Interrupted, StopRequest, deferred_signals
from training.loss import ElboTerms, elbo_terms, iwae_loss
from training.model import VAE
from training.progress import LINE_SECONDS, Meter, wants_bar
from training.rundir import CHECKPOINT, prepare_run_dir

log = logging.getLogger(__name__)

N_ROWS = 10  # images in the originals/reconstructions strip
N_SAMPLES = 64  # images in the sample grid


@dataclass(frozen=True)
class TrainResult:
    model: VAE
    iterations: int
    seconds: float  # training seconds, summed over every segment of a resumed run
    stopped_early: bool


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Drop lines logged after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    keep = [
        line for line in path.read_text().splitlines() if json.loads(line)["iteration"] <= iteration
    ]
    path.write_text("".join(f"{line}\n" for line in keep))


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
        self.since = time.perf_counter()

    def add(self, terms: ElboTerms) -> None:
        self.n += 1
        self.loss += terms.loss.item()
        self.recon += terms.reconstruction.item()
        self.kl += terms.kl.item()

    def means(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"loss": self.loss / n, "reconstruction": self.recon / n, "kl": self.kl / n}


class _Loop:
    """One segment of a run: from state.iteration to cfg.iterations, or an early stop."""

    def __init__(
        self,
        cfg: TrainConfig,
        state: RunState,
        val_x: torch.Tensor,
        run_dir: Path,
        metrics: TextIO,
        meter: Meter,
    ) -> None:
        self.cfg, self.state, self.val_x, self.run_dir = cfg, state, val_x, run_dir
        self.metrics, self.meter = metrics, meter
        self.running = _Running()
        self.stopped_early = False

    def run(self, stop: StopRequest) -> bool:
        """Train until done; True when early stopping ended the run."""
        self.state.model.train()
        while self.state.iteration < self.cfg.iterations and not self.stopped_early:
            self.running.add(_step(self.cfg, self.state, self.state.stream.next()))
            self.state.iteration += 1
            self._periodic()
            if stop.signum:
                self.checkpoint()
                raise Interrupted(stop.signum, self.state.iteration, self.run_dir / CHECKPOINT)
        return self.stopped_early

    def _periodic(self) -> None:
        cfg, it = self.cfg, self.state.iteration
        last = it == cfg.iterations
        if it % cfg.log_every == 0 or last:
            self._log_training()
        if it % cfg.eval_every == 0 or last:
            self.stopped_early = self._validate()
        if it % cfg.image_every == 0 or last:
            write_images(self.state.model, self.val_x, self.run_dir / "images", it)
        if it % cfg.checkpoint_every == 0 or last or self.stopped_early:
            self.checkpoint()

    def checkpoint(self) -> None:
        save_checkpoint(self.run_dir / CHECKPOINT, self.state, self.cfg)

    def _write(self, row: dict[str, Any]) -> None:
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()

    def _log_training(self) -> None:
        means, n = self.running.means(), self.running.n
        rate = n / max(time.perf_counter() - self.running.since, 1e-9)
        lr = self.state.scheduler.get_last_lr()[0]
        self._write(
            {
                "kind": "train",
                "iteration": self.state.iteration,
                **means,
                "lr": lr,
                "it_per_s": rate,
            }
        )
        shown = {"loss": "loss", "reconstruction": "recon", "kl": "kl"}
        self.meter.update(n, **{shown[k]: f"{v:.2f}" for k, v in means.items()})
        self.running = _Running()

    def _validate(self) -> bool:
        """Log validation -ELBO, track the best weights; True when early stopping says stop."""
        state, cfg = self.state, self.cfg
        terms = validation_terms(state.model, self.val_x)
        neg_elbo = terms.loss.item()
        self._write(
            {
                "kind": "validation",
                "iteration": state.iteration,
                "neg_elbo": neg_elbo,
                "reconstruction": terms.reconstruction.item(),
                "kl": terms.kl.item(),
            }
        )
        self.meter.update(0, **{"val -ELBO": f"{neg_elbo:.2f}"})
        if neg_elbo < state.best_neg_elbo:
            state.best_neg_elbo, state.best_iteration = neg_elbo, state.iteration
            state.evals_since_best = 0
            if cfg.early_stop_patience:
                state.best_weights = copy.deepcopy(state.model.state_dict())
            return False
        state.evals_since_best += 1
        return bool(cfg.early_stop_patience) and state.evals_since_best >= cfg.early_stop_patience


def _start(cfg: TrainConfig, train_x: torch.Tensor, run_dir: Path, resume: bool) -> RunState:
    if not resume:
        return build_state(cfg, train_x)
    state = load_checkpoint(run_dir / CHECKPOINT, cfg, train_x)
    _truncate_metrics(run_dir / "metrics.jsonl", state.iteration)
    log.info("resumed from %s at iteration %d", run_dir / CHECKPOINT, state.iteration)
    return state


def train(
    cfg: TrainConfig,
    train_x: torch.Tensor,
    val_x: torch.Tensor,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    line_seconds: float = LINE_SECONDS,
) -> TrainResult:
    """Train `cfg.iterations` steps on binarised train_x [N, 784], writing into run_dir.

    A run_dir holding a previous run is refused unless `resume` (continue from its
    checkpoint) or `overwrite`. On SIGINT/SIGTERM the current step finishes, a checkpoint
    is written and `Interrupted` is raised. Progress is a bar on a terminal when
    `progress`, otherwise a log line every `line_seconds`.
    """
    torch.set_num_threads(cfg.threads)
    prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    state = _start(cfg, train_x, run_dir, resume)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    meter = Meter(
        "training",
        cfg.iterations,
        "it",
        bar=wants_bar(progress),
        every_s=line_seconds,
        initial=state.iteration,
    )
    with deferred_signals() as stop, (run_dir / "metrics.jsonl").open("a") as metrics, meter:
        state.started = time.perf_counter()
        stopped_early = _Loop(cfg, state, val_x, run_dir, metrics, meter).run(stop)
        seconds = state.seconds()
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
