"""ONNX export of the encoder, the decoder and the fused reconstruct graph, verified against
torch through onnxruntime."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from training.config import IMAGE_PIXELS
from training.model import VAE

OPSET = 18
TOLERANCE = 1e-4  # max absolute difference allowed between onnxruntime and torch outputs
VERIFY_BATCH = 37  # deliberately not the export example's batch size
EXAMPLE_BATCH = 2
EXPORTER_LOGGER = "torch.onnx._internal.exporter._registration"  # chatter, silenced in export

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: its file and named tensor shapes ("batch" is the dynamic axis)."""

    file: str
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]


class _DecoderWithProbs(nn.Module):
    """z -> (logits, probs): the service wants both without a sigmoid of its own."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.decoder(z)
        return logits, torch.sigmoid(logits)


class _Reconstruct(nn.Module):
    """x -> (mu, logvar, probs of decoding mu): a mode=mean reconstruct in one graph, so that
    the service makes one onnxruntime run instead of two (whose fixed costs dominate)."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.decoder = model.decoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x)
        return mu, logvar, torch.sigmoid(self.decoder(mu))


def graph_specs(latent_dim: int) -> dict[str, GraphSpec]:
    return {
        "encoder": GraphSpec(
            "encoder.onnx",
            {"x": ["batch", IMAGE_PIXELS]},
            {"mu": ["batch", latent_dim], "logvar": ["batch", latent_dim]},
        ),
        "decoder": GraphSpec(
            "decoder.onnx",
            {"z": ["batch", latent_dim]},
            {"logits": ["batch", IMAGE_PIXELS], "probs": ["batch", IMAGE_PIXELS]},
        ),
        "reconstruct": GraphSpec(
            "reconstruct.onnx",
            {"x": ["batch", IMAGE_PIXELS]},
            {
                "mu": ["batch", latent_dim],
                "logvar": ["batch", latent_dim],
                "probs": ["batch", IMAGE_PIXELS],
            },
        ),
    }


def _export_one(module: nn.Module, example: torch.Tensor, spec: GraphSpec, path: Path) -> None:
    (input_name,) = spec.inputs
    batch = torch.export.Dim("batch", min=1, max=1_000_000)
    # The exporter's internals emit deprecation chatter and notes about torchvision ops
    # that are not about our graphs; silence them for the duration of the export.
    registration = logging.getLogger(EXPORTER_LOGGER)
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[input_name],
                output_names=list(spec.outputs),
                dynamic_shapes=({0: batch},),
                opset_version=OPSET,
                external_data=False,
                dynamo=True,
                verbose=False,
            )
    finally:
        registration.setLevel(level)


def export_onnx(model: VAE, out_dir: Path) -> dict[str, GraphSpec]:
    """Write encoder.onnx, decoder.onnx and reconstruct.onnx into `out_dir`; return their specs."""
    model = model.eval()
    specs = graph_specs(model.latent_dim)
    examples = {
        "encoder": torch.rand(EXAMPLE_BATCH, IMAGE_PIXELS),
        "decoder": torch.randn(EXAMPLE_BATCH, model.latent_dim),
        "reconstruct": torch.rand(EXAMPLE_BATCH, IMAGE_PIXELS),
    }
    modules: dict[str, nn.Module] = {
        "encoder": model.encoder,
        "decoder": _DecoderWithProbs(model),
        "reconstruct": _Reconstruct(model),
    }
    for name, spec in specs.items():
        _export_one(modules[name], examples[name], spec, out_dir / spec.file)
    return specs


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def verify_export(model: VAE, out_dir: Path, seed: int = 0) -> float:
    """Run every graph and torch on a batch of VERIFY_BATCH; return the max |difference|.

    Raises ValueError when any output differs by more than TOLERANCE.
    """
    specs = graph_specs(model.latent_dim)
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(VERIFY_BATCH, IMAGE_PIXELS, generator=gen) > 0.5).float()
    z = torch.randn(VERIFY_BATCH, model.latent_dim, generator=gen)
    with torch.no_grad():
        mu, logvar = model.eval().encode(x)
        logits = model.decode(z)
        mean_probs = torch.sigmoid(model.decode(mu))
    expected = {
        "encoder": [mu, logvar],
        "decoder": [logits, torch.sigmoid(logits)],
        "reconstruct": [mu, logvar, mean_probs],
    }
    feeds = {
        "encoder": {"x": x.numpy()},
        "decoder": {"z": z.numpy()},
        "reconstruct": {"x": x.numpy()},
    }
    worst = 0.0
    for name, spec in specs.items():
        got = _session(out_dir / spec.file).run(list(spec.outputs), feeds[name])
        for tensor_name, ours, theirs in zip(spec.outputs, got, expected[name], strict=True):
            diff = float(np.max(np.abs(ours - theirs.numpy())))
            if not np.isfinite(diff) or diff > TOLERANCE:
                raise ValueError(
                    f"ONNX {name}.{tensor_name} differs from torch by {diff:.3g} "
                    f"(tolerance {TOLERANCE}) at batch {VERIFY_BATCH}"
                )
            worst = max(worst, diff)
    log.info("export verified: max |onnx - torch| = %.3g at batch %d", worst, VERIFY_BATCH)
    return worst
