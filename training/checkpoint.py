"""Run state and its checkpoint: everything a resumed run needs to match an uninterrupted one."""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.config import TrainConfig
from training.data import BatchStream
from training.model import VAE


class CheckpointError(ValueError):
    """The checkpoint is missing, unreadable, or belongs to another configuration."""


@dataclass
class RunState:
    """The model, its optimiser and every source of randomness, at `iteration`."""

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
    seconds_before: float = 0.0  # training seconds of the segments before this one
    started: float = field(default_factory=time.perf_counter)  # this segment's start

    def seconds(self) -> float:
        """Training seconds so far, across every resumed segment."""
        return self.seconds_before + time.perf_counter() - self.started


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
    """Written to a temporary name and renamed, so the checkpoint is always whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": cfg.to_dict(),
        "iteration": state.iteration,
        "seconds": state.seconds(),
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


def _read(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, weights_only=False)
        TrainConfig.from_dict(payload["config"])
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a training checkpoint ({exc})") from None
    return payload


def load_checkpoint(path: Path, cfg: TrainConfig, train_x: torch.Tensor) -> RunState:
    """The state saved at `path`, which must have been made with `cfg`."""
    payload = _read(path)
    if changed := cfg.differences(TrainConfig.from_dict(payload["config"])):
        fields = "; ".join(
            f"{k}: {new!r} now, {old!r} in the checkpoint" for k, (new, old) in changed.items()
        )
        raise CheckpointError(f"cannot resume {path} with other settings ({fields})")
    state = build_state(cfg, train_x)
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    state.stream.load_state_dict(payload["stream"])
    state.noise.set_state(payload["noise"])
    state.iteration = int(payload["iteration"])
    state.seconds_before = float(payload.get("seconds", 0.0))
    best = payload["best"]
    state.best_neg_elbo, state.best_iteration = float(best["neg_elbo"]), int(best["iteration"])
    state.best_weights, state.evals_since_best = best["weights"], int(best["evals_since_best"])
    return state


def load_model(path: Path) -> tuple[VAE, TrainConfig]:
    """The model (best weights when early stopping kept some) and config of a checkpoint."""
    payload = _read(path)
    cfg = TrainConfig.from_dict(payload["config"])
    model = VAE(cfg)
    model.load_state_dict(payload["best"]["weights"] or payload["model"])
    return model.eval(), cfg


def checkpoint_run_info(path: Path) -> dict[str, Any]:
    """The run figures a manifest records, as far as the checkpoint knows them."""
    payload = _read(path)
    iterations, seconds = int(payload["iteration"]), float(payload.get("seconds", 0.0))
    return {
        "iterations": iterations,
        "train_seconds": round(seconds, 2),
        "iterations_per_second": round(iterations / seconds, 1) if seconds else None,
        "threads": int(payload["config"].get("threads", 1)),
    }
