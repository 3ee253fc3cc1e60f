"""The VAE of Kingma & Welling (2013): an MLP Gaussian encoder and a Bernoulli decoder.

Pure modules: no I/O and no device logic; every size comes from `TrainConfig`.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from training.config import IMAGE_PIXELS, TrainConfig


def mlp(widths: list[int], init_std: float) -> nn.Sequential:
    """Linear layers between consecutive `widths`, ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        linear = nn.Linear(fan_in, fan_out)
        # tf.truncated_normal_initializer(0.0, 0.1): normal truncated at 2 std, biases zero.
        nn.init.trunc_normal_(linear.weight, 0.0, init_std, -2 * init_std, 2 * init_std)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """q(z|x): x [B, 784] -> (mu [B, L], logvar [B, L])."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.net = mlp([IMAGE_PIXELS, *cfg.encoder_hidden, 2 * cfg.latent_dim], cfg.init_std)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=-1)
        return mu, logvar


class Decoder(nn.Module):
    """p(x|z): z [B, L] -> Bernoulli logits [B, 784]."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.net = mlp([cfg.latent_dim, *cfg.decoder_hidden, IMAGE_PIXELS], cfg.init_std)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class VAE(nn.Module):
    """Encoder and decoder, with the reparameterisation between them."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.latent_dim = cfg.latent_dim
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I); noise drawn from `generator`."""
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, 784] -> (logits [B, 784], mu [B, L], logvar [B, L])."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator)
        return self.decode(z), mu, logvar


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
