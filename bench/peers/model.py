"""The seed network's reconstruct path as TorchServe's eager-mode model file.

TorchServe imports this file (`torch-model-archiver --model-file`), builds its one class
without arguments and loads the archive's state dict into it. The widths are the seed
preset's (training/config.py: 784-128-64, decoder mirrors it); `archive.py` refuses a
checkpoint of any other architecture.
"""

import torch
from torch import nn

PIXELS, HIDDEN, LATENT = 784, 128, 64


class Reconstruct(nn.Module):
    """x [B, 784] in {0, 1} -> probs [B, 784]: the decoder's Bernoulli means at z = mu, the
    same outputs as the `probs` of the service's reconstruct.onnx (mode=mean)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(PIXELS, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2 * LATENT)
        )
        self.decoder = nn.Sequential(
            nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, PIXELS)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = self.encoder(x)[:, :LATENT]  # [B, 2L] = (mu, logvar)
        return torch.sigmoid(self.decoder(mu))
