"""A TorchServe handler for the request vae-serve answers at
`POST /v1/reconstruct?preprocess=none`: a raw `image/png` body of a 28x28 digit in, the PNG of
its reconstruction out.

The same work as the service: decode the PNG to 8-bit gray, scale to [0, 1], binarise at the
published model's threshold (its manifest.json, packed into the archive), run the model
(inherited `BaseHandler.inference`: eager PyTorch under `torch.inference_mode`), round the
probabilities to 8-bit gray and encode a PNG. PNGs are read and written with PIL, as a
handler author would.
"""

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from ts.torch_handler.base_handler import BaseHandler

SHAPE = (28, 28)


class PngReconstruct(BaseHandler):
    """PNG bytes -> x [B, 784] -> the model -> probs [B, 784] -> PNG bytes, per request."""

    def initialize(self, context: Any) -> None:  # TorchServe's Context
        super().initialize(context)
        manifest = Path(context.system_properties["model_dir"]) / "manifest.json"
        self.threshold = float(
            json.loads(manifest.read_text())["preprocessing"]["binarize_threshold"]
        )

    def preprocess(self, data: list[dict]) -> torch.Tensor:
        rows = []
        for request in data:
            body = request.get("data") or request.get("body")
            image = Image.open(io.BytesIO(body)).convert("L")
            if image.size != SHAPE:
                raise ValueError(f"expected a {SHAPE[1]}x{SHAPE[0]} image, got {image.size}")
            gray = np.asarray(image, dtype=np.float32) / 255.0
            rows.append((gray > self.threshold).astype(np.float32).reshape(-1))
        return torch.from_numpy(np.stack(rows))

    def postprocess(self, data: torch.Tensor) -> list[bytes]:
        pixels = (data.clamp(0, 1) * 255).round().to(torch.uint8).reshape(-1, *SHAPE).numpy()
        responses = []
        for i, image in enumerate(pixels):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            responses.append(buffer.getvalue())
            self.context.set_response_content_type(i, "image/png")
        return responses
