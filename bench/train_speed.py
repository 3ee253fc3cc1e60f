"""Training throughput: the project's loop (data pipeline included) vs a bare in-memory loop.

Both run the seed recipe (784-128-64 VAE, batch 100, Adam 1e-3) on the same binarised
tensor, alternating trial by trial so that machine noise hits both alike; the figure that
matters is the ratio of medians.

    python bench/train_speed.py [--data-dir ../shared/data/mnist] [--iterations 2000] [--trials 5]

Without the genuine MNIST files it uses synthetic digits of the same shape (speed does not
depend on the pixels).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from training.config import TrainConfig
from training.data import DataError, DataSource, binarize, load_split, train_validation
from training.loss import elbo_terms
from training.model import VAE
from training.train import train


def bare_loop(cfg: TrainConfig, x: torch.Tensor) -> float:
    """The minimal loop: random batches by fancy indexing, no logging. Returns it/s.

    It runs the plain ELBO of the config's network (no warm-up or schedule: their cost is
    one multiplication and one scheduler step per iteration).
    """
    torch.manual_seed(cfg.seed)
    model = VAE(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    start = time.perf_counter()
    for _ in range(cfg.iterations):
        batch = x[torch.randint(0, len(x), (cfg.batch_size,))]
        loss = elbo_terms(model, batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return cfg.iterations / (time.perf_counter() - start)


def project_loop(cfg: TrainConfig, x: torch.Tensor, val: torch.Tensor) -> float:
    """training.train.train with its metrics log, validation, images and checkpoints."""
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(cfg, x, val, Path(run_dir), progress=False)
    return result.iterations / result.seconds


def load(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        tr, val = train_validation(load_split(DataSource(data_dir, download=False), "train"))
        return binarize(tr.images, 0.5), binarize(val.images, 0.5), f"MNIST from {data_dir}"
    except DataError:
        from tests.mnist_files import synthetic_digits

        images, _ = synthetic_digits(60_000)
        x = binarize(images, 0.5)
        return x[:55_000], x[55_000:], "synthetic digits (MNIST not found)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/mnist"))
    parser.add_argument("--iterations", type=int, default=2_000)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--preset", default="seed", help="the network and recipe to time")
    args = parser.parse_args()
    x, val, what = load(args.data_dir)
    print(f"preset {args.preset}; {what}; {args.iterations} iterations x {args.trials} trials")
    print("| threads | bare loop it/s (median) | project it/s (median) | ratio |")
    print("| --- | --- | --- | --- |")
    for threads in args.threads:
        cfg = dataclasses.replace(
            TrainConfig.from_preset(args.preset), iterations=args.iterations, threads=threads
        )
        torch.set_num_threads(threads)
        bare, ours = [], []
        for _ in range(args.trials):
            bare.append(bare_loop(cfg, x))
            ours.append(project_loop(cfg, x, val))
        b, o = statistics.median(bare), statistics.median(ours)
        print(f"| {threads} | {b:.0f} | {o:.0f} | {o / b:.2f}x |")


if __name__ == "__main__":
    main()
