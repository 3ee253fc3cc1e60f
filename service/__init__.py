"""The vae-mnist inference service: FastAPI + onnxruntime over the model repository."""

__version__ = "0.1.0"
