"""-ELBO, importance-weighted NLL and active units, for a checkpoint or a published version.

Both kinds of model go through the same math (training.loss): a published ONNX version is
wrapped so that its encode/decode return torch tensors.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from training.config import EVAL_K, IMAGE_PIXELS
from training.loss import ElboTerms, Encodes, elbo_terms, importance_terms
from training.progress import Meter

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2015): Cov_x(E_q[u]) > 0.01
EVAL_SEED = 1234  # fixed noise for validation figures, so that every report of one model agrees
MODEL_GRAPHS = ("encoder", "decoder")  # the model; other graphs (reconstruct) are copies of it


def _session(path: Path, threads: int) -> ort.InferenceSession:
    """Options as the service uses them: idle sessions must not spin on the other core."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxVAE:
    """A published version (its encoder.onnx and decoder.onnx, per manifest.json) run by
    onnxruntime."""

    def __init__(self, version_dir: Path, threads: int = 1) -> None:
        path = version_dir / "manifest.json"
        self.manifest: dict[str, Any] = json.loads(path.read_text())
        try:
            self.latent_dim = int(self.manifest["latent_dim"])
            graphs = self.manifest["graphs"]
            encoder, decoder = graphs["encoder"]["file"], graphs["decoder"]["file"]
            self.threshold = float(self.manifest["preprocessing"]["binarize_threshold"])
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"{path} is not a published version's manifest (docs/model-repository.md): "
                f"{type(exc).__name__} {exc}"
            ) from exc
        self.encoder = _session(version_dir / encoder, threads)
        self.decoder = _session(version_dir / decoder, threads)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder.run(["mu", "logvar"], {"x": x.numpy()})
        return torch.from_numpy(mu), torch.from_numpy(logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(-1, z.shape[-1]).contiguous().numpy()
        (logits,) = self.decoder.run(["logits"], {"z": flat})
        return torch.from_numpy(logits).reshape(*z.shape[:-1], -1)


@dataclass(frozen=True)
class Evaluation:
    split: str
    images: int
    neg_elbo: float  # one-sample -ELBO with fixed noise: what metrics.jsonl logs in training
    reconstruction: float
    kl: float
    iwae_nll: float  # -log (1/k) sum w_i: the tighter bound, Burda et al. (2015)
    iwae_k: int
    active_units: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@torch.no_grad()
def validation_terms(model: Encodes, x: torch.Tensor, seed: int = EVAL_SEED) -> ElboTerms:
    """One-sample -ELBO on all of x [N, 784] with the noise of `seed`: the validation figure
    of training's metrics log, of a run's summary and of the quality gate alike."""
    training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
        model.eval()
    terms = elbo_terms(model, x, torch.Generator().manual_seed(seed))
    if isinstance(model, torch.nn.Module):
        model.train(training)
    return terms


@torch.no_grad()
def evaluate(
    model: Encodes,
    x: torch.Tensor,
    split: str,
    k: int = EVAL_K,
    seed: int = EVAL_SEED,
    meter: Meter | None = None,
) -> Evaluation:
    """Figures in nats per image on binarised x [N, 784]; the IWAE bound with k samples."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    terms = validation_terms(model, x, seed)
    gen = torch.Generator().manual_seed(seed)
    chunk = max(1, 20_000 // k)  # keeps [k, chunk, 784] near 60 MB
    iwae, mus = [], []
    for start in range(0, len(x), chunk):
        xb = x[start : start + chunk]
        log_px_z, log_prior_ratio, _ = importance_terms(model, xb, k, gen)
        iwae.append(-(torch.logsumexp(log_px_z + log_prior_ratio, 0) - np.log(k)))  # [B]
        mus.append(model.encode(xb)[0])
        if meter is not None:
            meter.update(len(xb))
    mu = torch.cat(mus)
    return Evaluation(
        split=split,
        images=len(x),
        neg_elbo=terms.loss.item(),
        reconstruction=terms.reconstruction.item(),
        kl=terms.kl.item(),
        iwae_nll=torch.cat(iwae).mean().item(),
        iwae_k=k,
        active_units=int((mu.var(0) > ACTIVE_UNIT_THRESHOLD).sum().item()),
    )


def onnx_parameters(version_dir: Path, manifest: dict[str, Any]) -> int:
    """Weights of the model: the initializers of its encoder and decoder graphs (the fused
    reconstruct graph holds copies of the same weights)."""
    import onnx

    total = 0
    for name in MODEL_GRAPHS:
        model = onnx.load(str(version_dir / manifest["graphs"][name]["file"]))
        total += sum(int(np.prod(init.dims)) for init in model.graph.initializer)
    return total


def serving_cost_us(model: OnnxVAE, repeats: int = 2_000, rounds: int = 7) -> float:
    """Median microseconds of encode + decode for one image, as the service runs them.

    Sessions as the service builds them (OnnxVAE's default of 1 thread, no spinning); a
    noisy machine inflates single rounds, so this is the median of `rounds` means over
    `repeats` calls.
    """
    encoder, decoder = model.encoder, model.decoder
    x = (np.random.default_rng(0).random((1, IMAGE_PIXELS)) > 0.5).astype(np.float32)
    means = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            mu, _ = encoder.run(["mu", "logvar"], {"x": x})
            decoder.run(["probs"], {"z": mu})
        means.append((time.perf_counter() - start) / repeats * 1e6)
    return float(np.median(means))


def describe_version(version_dir: Path, model: OnnxVAE) -> dict[str, Any]:
    """Size, cost and provenance figures of a published version, beside its evaluation."""
    manifest = model.manifest
    run = manifest.get("run") or {}
    return {
        "version": manifest["version"],
        "preset": manifest["training"]["preset"],
        "parameters": onnx_parameters(version_dir, manifest),
        "onnx_bytes": sum(int(manifest["graphs"][name]["bytes"]) for name in MODEL_GRAPHS),
        "train_seconds": run.get("train_seconds"),
        "train_iterations": run.get("iterations"),
        "serving_cost_us_per_image": round(serving_cost_us(model), 1),
    }
