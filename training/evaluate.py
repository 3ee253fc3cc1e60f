"""-ELBO, importance-weighted NLL and active units, for a checkpoint or a published version.

Both kinds of model go through the same math (training.loss): a published ONNX version is
wrapped so that its encode/decode return torch tensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
import torch

from training.loss import _importance_terms

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2015): Cov_x(E_q[u]) > 0.01


class Encodes(Protocol):
    latent_dim: int

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


class OnnxVAE:
    """A published version (encoder.onnx + decoder.onnx + manifest.json) run by onnxruntime."""

    def __init__(self, version_dir: Path, threads: int = 1) -> None:
        self.manifest: dict[str, Any] = json.loads((version_dir / "manifest.json").read_text())
        self.latent_dim = int(self.manifest["latent_dim"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        graphs = self.manifest["graphs"]
        self.encoder = ort.InferenceSession(
            str(version_dir / graphs["encoder"]["file"]),
            options,
            providers=["CPUExecutionProvider"],
        )
        self.decoder = ort.InferenceSession(
            str(version_dir / graphs["decoder"]["file"]),
            options,
            providers=["CPUExecutionProvider"],
        )

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
    neg_elbo: float  # E_q[-log p(x|z)] (averaged over the k samples) + analytic KL
    reconstruction: float
    kl: float
    iwae_nll: float  # -log (1/k) sum w_i: the tighter bound, Burda et al. (2015)
    iwae_k: int
    active_units: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@torch.no_grad()
def evaluate(
    model: Encodes, x: torch.Tensor, split: str, k: int = 1000, seed: int = 0, chunk: int = 0
) -> Evaluation:
    """Figures in nats per image on binarised x [N, 784], with k importance samples."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    gen = torch.Generator().manual_seed(seed)
    chunk = chunk or max(1, 20_000 // k)  # keeps [k, chunk, 784] near 60 MB
    recon, kl, iwae, mus = [], [], [], []
    for start in range(0, len(x), chunk):
        xb = x[start : start + chunk]
        log_px_z, log_prior_ratio, kl_b = _importance_terms(model, xb, k, gen)  # type: ignore[arg-type]
        log_w = log_px_z + log_prior_ratio  # [k, B]
        recon.append(-log_px_z.mean(0))
        kl.append(kl_b)
        iwae.append(-(torch.logsumexp(log_w, 0) - np.log(k)))
        mus.append(model.encode(xb)[0])
    mu = torch.cat(mus)
    r, kk = torch.cat(recon).mean().item(), torch.cat(kl).mean().item()
    return Evaluation(
        split=split,
        images=len(x),
        neg_elbo=r + kk,
        reconstruction=r,
        kl=kk,
        iwae_nll=torch.cat(iwae).mean().item(),
        iwae_k=k,
        active_units=int((mu.var(0) > ACTIVE_UNIT_THRESHOLD).sum().item()),
    )
