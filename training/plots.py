"""End-of-run figures: loss curves and a 2-D map of validation latents."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np


def read_metrics(path: Path) -> list[dict[str, float | int | str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loss_curves(metrics_path: Path, out: Path) -> None:
    """Training loss / reconstruction / KL and validation -ELBO against iteration."""
    rows = read_metrics(metrics_path)
    train = [r for r in rows if r.get("kind") == "train"]
    val = [r for r in rows if r.get("kind") == "validation"]
    fig, (ax_loss, ax_kl) = plt.subplots(1, 2, figsize=(11, 4))
    its = [r["iteration"] for r in train]
    ax_loss.plot(its, [r["loss"] for r in train], label="train loss (-ELBO)", lw=1)
    ax_loss.plot(its, [r["reconstruction"] for r in train], label="train reconstruction", lw=1)
    if val:
        ax_loss.plot(
            [r["iteration"] for r in val],
            [r["neg_elbo"] for r in val],
            "o-",
            label="validation -ELBO",
        )
    ax_loss.set(xlabel="iteration", ylabel="nats per image", title="Loss")
    top = float(np.percentile([float(r["loss"]) for r in train], 95)) if train else None
    if top:
        ax_loss.set_ylim(top=top * 1.05)
    ax_loss.legend()
    ax_kl.plot(its, [r["kl"] for r in train], color="tab:green", lw=1)
    ax_kl.set(xlabel="iteration", ylabel="nats per image", title="KL(q(z|x) || p(z))")
    for ax in (ax_loss, ax_kl):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def pca_2d(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project [N, D] onto its two leading principal axes; also return explained ratios."""
    centred = points - points.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    explained = s**2 / np.sum(s**2)
    return centred @ vt[:2].T, explained[:2]


def latent_map(mu: np.ndarray, labels: np.ndarray, out: Path) -> None:
    """Validation posterior means, projected to 2-D by PCA and coloured by digit."""
    xy, explained = pca_2d(mu) if mu.shape[1] > 2 else (mu, np.ones(2))
    fig, ax = plt.subplots(figsize=(6.5, 6))
    scatter = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=4, alpha=0.7)
    ax.legend(*scatter.legend_elements(), title="digit", loc="best", fontsize=8)
    ax.set(
        xlabel=f"PC 1 ({explained[0]:.0%} of variance)",
        ylabel=f"PC 2 ({explained[1]:.0%} of variance)",
        title="Validation latents (posterior means, PCA)",
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
