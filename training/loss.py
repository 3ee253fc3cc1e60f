"""Bounds on log p(x) for a Bernoulli-decoder VAE, in nats per image.

-ELBO = E_q[-log p(x|z)] + KL(q(z|x) || N(0, I)), with the KL in closed form
(Kingma & Welling 2013, appendix B). The importance-weighted bound follows
Burda, Grosse & Salakhutdinov (2015), eq. 8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F  # noqa: N812

from training.model import VAE


class Encodes(Protocol):
    """A VAE as the math needs it: a torch `VAE`, or a published version run by onnxruntime."""

    latent_dim: int

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class ElboTerms:
    """Batch means (nats per image); `loss` carries the gradient."""

    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


def reconstruction_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per image: the summed sigmoid cross-entropy, [..., 784] -> [...]."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per image, [B, L] -> [B]."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def elbo_terms(
    model: Encodes,
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    kl_weight: float = 1.0,
) -> ElboTerms:
    """One-sample -ELBO (the seed notebook's loss), averaged over the batch."""
    mu, logvar = model.encode(x)
    logits = model.decode(VAE.reparameterize(mu, logvar, generator))
    recon = reconstruction_nll(logits, x).mean()
    kl = kl_divergence(mu, logvar).mean()
    return ElboTerms(loss=recon + kl_weight * kl, reconstruction=recon, kl=kl)


def importance_terms(
    model: Encodes, x: torch.Tensor, k: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For k samples z_i ~ q(z|x), the terms of the importance weights.

    Returns (log p(x|z_i) [k, B], log p(z_i) - log q(z_i|x) [k, B], analytic KL [B]).
    """
    mu, logvar = model.encode(x)
    eps = torch.randn((k, *mu.shape), generator=generator, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps  # [k, B, L]
    log_px_z = -reconstruction_nll(model.decode(z), x.expand(k, *x.shape))
    # log N(z; 0, I) - log N(z; mu, sigma): the 2*pi terms cancel.
    log_prior_ratio = -0.5 * (z.pow(2) - eps.pow(2) - logvar).sum(-1)
    return log_px_z, log_prior_ratio, kl_divergence(mu, logvar)


def log_weights(
    model: Encodes, x: torch.Tensor, k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """log p(x, z_i) - log q(z_i | x) for k samples z_i ~ q(z|x): [B, 784] -> [k, B]."""
    log_px_z, log_prior_ratio, _ = importance_terms(model, x, k, generator)
    return log_px_z + log_prior_ratio


def iwae_nll(log_w: torch.Tensor) -> torch.Tensor:
    """-log (1/k) sum_i w_i per image, [k, B] -> [B]: an upper bound on -log p(x)."""
    k = log_w.shape[0]
    return -(torch.logsumexp(log_w, dim=0) - math.log(k))


def iwae_loss(
    model: Encodes, x: torch.Tensor, k: int, generator: torch.Generator | None
) -> ElboTerms:
    """The k-sample importance-weighted objective; recon and KL reported as one-sample terms."""
    log_px_z, log_prior_ratio, kl = importance_terms(model, x, k, generator)
    loss = iwae_nll(log_px_z + log_prior_ratio).mean()
    return ElboTerms(loss=loss, reconstruction=-log_px_z.mean().detach(), kl=kl.mean().detach())
