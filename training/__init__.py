"""Training half of vae-mnist: data, model, training loop, evaluation, ONNX export, publish."""
