"""ONNX export matches torch; publishing is atomic and gated."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training.config import TrainConfig
from training.density import DensityFit
from training.evaluate import OnnxVAE, describe_version
from training.export import EXPORTER_LOGGER, TOLERANCE, export_onnx, verify_export
from training.model import VAE, parameter_count
from training.publish import PublishRefusedError, complete_versions, publish_version, sha256_file
from training.repository import MANIFEST

CFG = TrainConfig.from_preset("tiny")
# Figures as a run records them: the same split of the same files, so the gate compares them.
DATA = {"files": {"train-images-idx3-ubyte.gz": "a" * 64, "train-labels-idx1-ubyte.gz": "b" * 64}}


def figures(neg_elbo: float) -> dict[str, object]:
    return {"split": "validation", "images": 5_000, "neg_elbo": neg_elbo}


def model(seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(CFG).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[VAE, Path]:
    out = tmp_path_factory.mktemp("export")
    m = model()
    export_onnx(m, out)
    return m, out


def test_onnx_matches_torch_at_another_batch_size(exported: tuple[VAE, Path]) -> None:
    m, out = exported
    x = (torch.rand(5, 784, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    encoder = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
    fused = ort.InferenceSession(str(out / "reconstruct.onnx"), providers=["CPUExecutionProvider"])
    mu, logvar = encoder.run(["mu", "logvar"], {"x": x.numpy()})
    logits, probs = decoder.run(["logits", "probs"], {"z": mu})
    f_mu, f_logvar, f_probs = fused.run(["mu", "logvar", "probs"], {"x": x.numpy()})
    with torch.no_grad():
        t_mu, t_logvar = m.encode(x)
        t_logits = m.decode(t_mu)
    np.testing.assert_allclose(mu, t_mu.numpy(), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(logvar, t_logvar.numpy(), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(logits, t_logits.numpy(), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(probs, torch.sigmoid(t_logits).numpy(), atol=TOLERANCE, rtol=0)
    # The fused graph decodes the posterior mean: the encoder and decoder in one run.
    np.testing.assert_allclose(f_mu, t_mu.numpy(), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(f_logvar, t_logvar.numpy(), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(f_probs, torch.sigmoid(t_logits).numpy(), atol=TOLERANCE, rtol=0)
    assert verify_export(m, out) <= TOLERANCE


def test_graphs_have_named_tensors_and_a_dynamic_batch(exported: tuple[VAE, Path]) -> None:
    _, out = exported
    graph = onnx.load(str(out / "encoder.onnx")).graph
    (x,) = graph.input
    dims = x.type.tensor_type.shape.dim
    assert x.name == "x" and dims[0].dim_param and dims[1].dim_value == 784
    assert [o.name for o in graph.output] == ["mu", "logvar"]
    assert [o.name for o in onnx.load(str(out / "decoder.onnx")).graph.output] == [
        "logits",
        "probs",
    ]
    fused = onnx.load(str(out / "reconstruct.onnx")).graph
    (x,) = fused.input
    dims = x.type.tensor_type.shape.dim
    assert x.name == "x" and dims[0].dim_param and dims[1].dim_value == 784
    assert [o.name for o in fused.output] == ["mu", "logvar", "probs"]
    assert [d.dim_value for d in fused.output[2].type.tensor_type.shape.dim][1:] == [784]


def test_verify_catches_a_mismatch(exported: tuple[VAE, Path]) -> None:
    _, out = exported
    with pytest.raises(ValueError, match="differs from torch"):
        verify_export(model(seed=1), out)  # other weights than the exported ones


def test_verify_catches_a_fused_graph_of_other_weights(
    exported: tuple[VAE, Path], tmp_path: Path
) -> None:
    m, out = exported
    other = tmp_path / "other"
    other.mkdir()
    export_onnx(model(seed=1), other)
    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed)
    shutil.copyfile(other / "reconstruct.onnx", mixed / "reconstruct.onnx")
    with pytest.raises(ValueError, match=r"ONNX reconstruct\.mu differs from torch"):
        verify_export(m, mixed)  # encoder and decoder right, the fused graph not


def test_publish_writes_a_complete_self_describing_version(tmp_path: Path) -> None:
    result = publish_version(
        tmp_path, model(), CFG, evaluation=figures(100.0), data_info=DATA, force=True
    )
    assert result.version == 1 and result.path == tmp_path / "vae" / "1"
    manifest = json.loads((result.path / MANIFEST).read_text())
    assert manifest["version"] == 1 and manifest["latent_dim"] == CFG.latent_dim
    assert manifest["image_shape"] == [28, 28]
    assert list(manifest["graphs"]) == ["encoder", "decoder", "reconstruct"]
    for name, graph in manifest["graphs"].items():
        assert graph["file"] == f"{name}.onnx"
        assert graph["sha256"] == sha256_file(result.path / graph["file"])
        assert graph["bytes"] == (result.path / graph["file"]).stat().st_size
    assert manifest["graphs"]["decoder"]["inputs"] == {"z": ["batch", CFG.latent_dim]}
    assert manifest["graphs"]["reconstruct"]["inputs"] == {"x": ["batch", 784]}
    assert manifest["graphs"]["reconstruct"]["outputs"] == {
        "mu": ["batch", CFG.latent_dim],
        "logvar": ["batch", CFG.latent_dim],
        "probs": ["batch", 784],
    }
    assert manifest["training"]["preset"] == "tiny"
    assert manifest["export_check"]["max_abs_diff"] <= TOLERANCE
    assert {"torch", "onnx", "onnxruntime"} <= set(manifest["software"])
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["1"]  # no staging left


def test_a_version_without_manifest_is_not_complete_and_its_number_is_not_reused(
    tmp_path: Path,
) -> None:
    (tmp_path / "vae" / "1").mkdir(parents=True)  # an abandoned publish
    (tmp_path / "vae" / ".staging-x").mkdir()
    assert complete_versions(tmp_path) == {}
    result = publish_version(tmp_path, model(), CFG, force=True)
    assert result.version == 2 and list(complete_versions(tmp_path)) == [2]


def test_failed_export_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> float:
        raise ValueError("ONNX encoder.mu differs from torch")

    monkeypatch.setattr("training.publish.verify_export", broken)
    with pytest.raises(ValueError, match="differs"):
        publish_version(tmp_path, model(), CFG, force=True)
    assert list((tmp_path / "vae").iterdir()) == []


def test_gate_refuses_a_worse_model_and_force_overrides(tmp_path: Path) -> None:
    publish_version(tmp_path, model(), CFG, evaluation=figures(100.0), data_info=DATA, force=True)

    def density() -> DensityFit:  # called only for a model the gate passes
        raise AssertionError("the latent density was fitted for a refused model")

    with pytest.raises(
        PublishRefusedError, match=r"refused: new -ELBO 105.00 vs version 1's 100.00"
    ):
        publish_version(
            tmp_path,
            model(),
            CFG,
            evaluation=figures(105.0),
            data_info=DATA,
            density=density,
        )
    assert list(complete_versions(tmp_path)) == [1]
    forced = publish_version(
        tmp_path, model(), CFG, evaluation=figures(105.0), data_info=DATA, force=True
    )
    assert forced.version == 2 and forced.gate.startswith("worse but forced")
    better = publish_version(tmp_path, model(), CFG, evaluation=figures(105.5), data_info=DATA)
    assert better.gate.startswith("passed")
    assert "recorded on the same validation split" in better.gate


def test_a_failed_export_restores_the_exporters_log_level(tmp_path: Path) -> None:
    registration = logging.getLogger(EXPORTER_LOGGER)
    registration.setLevel(logging.INFO)
    with pytest.raises(Exception, match="no-such-dir"):  # torch's own error for a bad path
        export_onnx(model(), tmp_path / "no-such-dir")
    assert registration.level == logging.INFO


def test_evaluate_counts_the_model_not_its_files(tmp_path: Path) -> None:
    m = model()
    with torch.no_grad():  # non-zero biases: the exporter folds away biases that are all zero
        for p in m.parameters():
            p.add_(0.01)
    version = publish_version(tmp_path, m, CFG, force=True).path
    manifest = json.loads((version / MANIFEST).read_text())
    assert "reconstruct" in manifest["graphs"]  # a copy of the encoder and decoder
    described = describe_version(version, OnnxVAE(version))
    assert described["parameters"] == parameter_count(m)
    graphs = manifest["graphs"]
    assert described["onnx_bytes"] == graphs["encoder"]["bytes"] + graphs["decoder"]["bytes"]
