"""In-process costs: the service's model call vs torch eager, ORT threads, and codec stages.

    python bench/model_speed.py [--repeats 15] [--calls 1000] [--model-dir DIR]

Everything is measured in one process, alternating between the contenders repeat by repeat
(so that machine noise hits them alike); figures are medians over `--repeats` of the mean
wall time of `--calls` calls.

1. Model path at batch 1: the service's model call for one 784-vector (a reconstruct job
   of mode=mean, its 28x28 PNG taken as it is (preprocess=none), run by
   service.inference.jobs.run_jobs as the executor hands it over), the graph runs
   alone (their outputs checked for NaN and infinity, as every run is; for the fused graph
   also its session's run unchecked), and the per-image cost of 16 such jobs batched,
   against torch eager (training.model.VAE of the served model's config with its weights,
   read from the ONNX initializers; encode -> mu -> decode -> sigmoid under inference_mode).
   Each service row
   twice when the version has the fused reconstruct graph: through it (one run), and through
   the encoder and decoder (two runs; the same runtime without its fused session, which is
   what a version without the graph serves). The embedded default model, or the version
   directory `--model-dir`; one thread each.
2. ORT intra-op threads 1 vs 2 per batch size (per-image cost of a reconstruct).
3. Codec stages of a 28x28 request: PNG decode, MNIST preprocessing, PNG encode (the
   service's encoder and PIL's).
4. Whole jobs, one request each without HTTP (reconstruct, encode, sample n=64 under each
   prior the version has): the floor under each endpoint, to which the trivial endpoint's
   HTTP cost adds.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import torch
from harness import digit_png, machine
from onnx import numpy_helper
from PIL import Image

from service.http.responses import json_response, png_response
from service.http.schemas import EncodeResponse
from service.images import decoding, png, preprocess
from service.inference.jobs import Job, Result, run_jobs
from service.model.loader import load_runtime
from service.model.manifest import read_manifest
from service.model.runtime import ModelRuntime, Prior
from training.config import TrainConfig
from training.model import VAE

EMBEDDED = Path(__file__).resolve().parents[1] / "service" / "default_model" / "vae"


def alternate(
    contenders: dict[str, Callable[[], object]], repeats: int, calls: int
) -> dict[str, float]:
    """Median over `repeats` of the mean microseconds per call, contenders interleaved."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            for _ in range(max(calls // 10, 10)):  # re-warm after the other contenders ran
                fn()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def runtime(model_dir: Path, threads: int) -> ModelRuntime:
    return load_runtime(model_dir, read_manifest(model_dir), threads=threads, source="repository")


def torch_twin(model_dir: Path) -> VAE:
    """The served model in torch: its config from the manifest, its weights from the ONNX
    initializers (their names are the state_dict keys)."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    training = manifest["training"]
    cfg = TrainConfig.from_preset(
        "seed",
        latent_dim=manifest["latent_dim"],
        encoder_hidden=tuple(training["encoder_hidden"]),
        decoder_hidden=tuple(training["decoder_hidden"]),
    )
    model = VAE(cfg).eval()
    state = {}
    for graph, prefix in (("encoder", "encoder."), ("decoder", "")):
        for tensor in onnx.load(model_dir / f"{graph}.onnx").graph.initializer:
            state[prefix + tensor.name] = torch.from_numpy(numpy_helper.to_array(tensor).copy())
    model.load_state_dict(state)
    return model


class Opened:
    """Images whose headers were read once; a job decodes them as the service's jobs do."""

    def __init__(self, files: list[bytes]) -> None:
        self.opened = [decoding.open_image(f, "body", 2**24) for f in files]
        self.count = len(files)

    @property
    def pixels(self) -> int:
        return sum(image.pixels for image in self.opened)

    def images(self) -> list[decoding.OpenedImage]:
        return self.opened


def mean_job(served: ModelRuntime, x: np.ndarray) -> Job[Result]:
    """A reconstruct of mode=mean of x [B, D] of 0 and 1, as PNGs taken as they are, as the
    route hands it to the executor (identity response)."""
    pngs = [png.encode((row.reshape(28, 28) * 255).astype(np.uint8)) for row in x]
    options = preprocess.ImageOptions("none", True, 0.5, (28, 28))
    return Job(served, Opened(pngs), options, z="mean", decode=True, finish=lambda r: r)


def run_one(job: Job[Result]) -> Result:
    (result,) = run_jobs([job])
    assert isinstance(result, Result)
    return result


FUSED_OUTPUTS = ["mu", "logvar", "probs"]


def model_path(model_dir: Path, repeats: int, calls: int) -> list[str]:
    torch.set_num_threads(1)
    served, twin = runtime(model_dir, 1), torch_twin(model_dir)
    # The same runtime without its fused session: what a version without the graph serves.
    two_graphs = dataclasses.replace(served, fused=None)
    x = (np.random.default_rng(0).random((1, 784)) > 0.5).astype(np.float32)
    xt = torch.from_numpy(x)
    x16 = (np.random.default_rng(1).random((16, 784)) > 0.5).astype(np.float32)
    two16 = [mean_job(two_graphs, x16[i : i + 1]) for i in range(16)]
    fused16 = [mean_job(served, x16[i : i + 1]) for i in range(16)]

    def torch_eager() -> torch.Tensor:
        with torch.inference_mode():
            mu, _ = twin.encode(xt)
            return torch.sigmoid(twin.decode(mu))

    torch_name = "torch eager: encode + decode + sigmoid"
    contenders: dict[str, Callable[[], object]] = {
        torch_name: torch_eager,
        "service, two graphs: one reconstruct job (run_one)": lambda: run_one(
            mean_job(two_graphs, x)
        ),
        "service, two graphs: encoder + decoder runs only": lambda: served.decode(
            served.encode(x)[0]
        ),
        "service, two graphs: per image, 16 jobs batched (run_jobs)": lambda: run_jobs(two16),
    }
    paths = {"two graphs": two_graphs}
    if served.fused is not None:
        paths["fused graph"] = served
        contenders |= {
            "service, fused graph: one reconstruct job (run_one)": lambda: run_one(
                mean_job(served, x)
            ),
            "service, fused graph: the fused run only": lambda: served.reconstruct_mean(x),
            "service, fused graph: the fused session's run, outputs unchecked": lambda: (
                served.fused.run(FUSED_OUTPUTS, {"x": x})
            ),
            "service, fused graph: per image, 16 jobs batched (run_jobs)": lambda: run_jobs(
                fused16
            ),
        }
    gaps = []
    for path, rt in paths.items():
        probs = run_one(mean_job(rt, x)).probs
        assert probs is not None
        gaps.append(f"{path} {float(np.abs(torch_eager().numpy() - probs).max()):.1e}")
    times = alternate(contenders, repeats, calls)
    for name in times:
        if "16 jobs batched" in name:
            times[name] /= 16
    base = times[torch_name]
    lines = [
        f"max |torch - onnxruntime| over the 784 probabilities: {', '.join(gaps)}",
        "| call (1 thread) | us per image (median) | speed-up over torch eager |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {name} | {t:.1f} | {base / t:.2f}x |" for name, t in times.items()]
    return lines


def ort_threads(model_dir: Path, repeats: int, calls: int) -> list[str]:
    one, two = runtime(model_dir, 1), runtime(model_dir, 2)
    lines = [
        "| batch | 1 thread us/image | 2 threads us/image | 2 threads vs 1 |",
        "| --- | --- | --- | --- |",
    ]
    for batch in (1, 16, 64, 256):
        x = (np.random.default_rng(batch).random((batch, 784)) > 0.5).astype(np.float32)
        n = max(calls // batch, 20)
        times = alternate(
            {"1": partial(one.reconstruct_mean, x), "2": partial(two.reconstruct_mean, x)},
            repeats,
            n,
        )
        t1, t2 = times["1"] / batch, times["2"] / batch
        lines.append(f"| {batch} | {t1:.2f} | {t2:.2f} | {t1 / t2:.2f}x |")
    return lines


BATCH = 16  # images preprocessed together, about what the inference thread takes at c=16


class Body:
    """One raw image body as the service's jobs read it (service.inference.jobs.ImageSource)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.count = 1

    @property
    def pixels(self) -> int:
        return self.images()[0].pixels

    def images(self) -> list[decoding.OpenedImage]:
        return [decoding.open_image(self.data, "body", 2**24)]


def decoded(data: bytes) -> np.ndarray:
    """An image's gray pixels in [0, 1], as preprocessing receives them."""
    pixels = decoding.decode(decoding.open_image(data, "body", 2**24))
    return pixels.astype(np.float32) / np.float32(255.0)


def one_input(data: bytes, options: preprocess.ImageOptions) -> np.ndarray:
    """An image's model input [1, D]."""
    return preprocess.input_rows([decoding.open_image(data, "body", 2**24)], options)


def codec(model_dir: Path, repeats: int, calls: int) -> list[str]:
    data = digit_png()
    mnist = preprocess.ImageOptions("mnist", True, 0.5, (28, 28))
    none = preprocess.ImageOptions("none", True, 0.5, (28, 28))
    gray = decoded(data)
    pixels = np.asarray(Image.open(io.BytesIO(data)))

    def pil_png(level: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()

    def decode() -> object:
        return decoded(data)

    def together(options: preprocess.ImageOptions) -> object:
        """16 images preprocessed in one call, as the inference thread does under load."""
        return preprocess.model_inputs(
            [(decoding.open_image(data, "body", 2**24), options) for _ in range(BATCH)]
        )

    times = alternate(
        {
            "PNG decode 28x28 (open, check, decode to gray)": decode,
            "preprocess=mnist on the decoded digit": lambda: preprocess._mnist_like(
                gray[None], (28, 28)
            ),
            "decode + preprocess=mnist + binarize": lambda: one_input(data, mnist),
            "decode + preprocess=none + binarize": lambda: one_input(data, none),
            f"decode + preprocess=mnist + binarize, {BATCH} together, per image": lambda: together(
                mnist
            ),
            f"decode + preprocess=none + binarize, {BATCH} together, per image": lambda: together(
                none
            ),
            "PNG encode 28x28, service encoder (stored)": lambda: png.encode(pixels),
            "PNG encode 28x28, PIL level 1": lambda: pil_png(1),
            "PNG encode 28x28, PIL level 6": lambda: pil_png(6),
        },
        repeats,
        calls,
    )
    for name in times:
        if "together" in name:
            times[name] /= BATCH
    lines = ["| stage (one 28x28 image) | us (median) |", "| --- | --- |"]
    lines += [f"| {name} | {t:.1f} |" for name, t in times.items()]
    return lines


def jobs(model_dir: Path, repeats: int, calls: int) -> list[str]:
    """Each endpoint's whole job as the service runs it for one request, without HTTP: the
    floor under that endpoint's cost (add the trivial endpoint's HTTP cost to it)."""
    served = runtime(model_dir, 1)
    data = digit_png()
    options = preprocess.ImageOptions("mnist", True, 0.5, (28, 28))
    shape = served.manifest.image_shape

    def reconstruct() -> object:
        def respond(result: Result) -> object:
            assert result.probs is not None
            return png_response(result.probs, shape, 1)

        return run_jobs([Job(served, Body(data), options, z="mean", decode=True, finish=respond)])

    def encode() -> object:
        def respond(result: Result) -> object:
            return json_response(
                EncodeResponse(
                    model_version=1,
                    latent_dim=served.manifest.latent_dim,
                    mu=result.mu.tolist(),
                    logvar=result.logvar.tolist(),
                    z=None,
                    seed=None,
                )
            )

        return run_jobs([Job(served, Body(data), options, z=None, decode=False, finish=respond)])

    def sample(prior: Prior) -> object:
        _, probs = served.sample(64, 1.0, np.random.default_rng(0), prior)
        return png_response(probs, shape, 1)

    jobs = {
        "reconstruct: open + decode + preprocess=mnist + model + PNG": reconstruct,
        "encode: open + decode + preprocess=mnist + encoder + JSON": encode,
        "sample n=64: standard prior draws + decoder at batch 64 + PNG grid": partial(
            sample, "standard"
        ),
    }
    if served.density is not None:
        jobs["sample n=64: fitted density draws + decoder at batch 64 + PNG grid"] = partial(
            sample, "fitted"
        )
    times = alternate(
        jobs,
        repeats,
        max(calls // 4, 50),
    )
    lines = ["| job (one request, no HTTP) | us (median) |", "| --- | --- |"]
    lines += [f"| {name} | {t:.0f} |" for name, t in times.items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--model-dir", type=Path, help="a version directory (default: embedded)")
    args = parser.parse_args()
    model_dir = args.model_dir or max(
        (p for p in EMBEDDED.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )
    training = json.loads((model_dir / "manifest.json").read_text())["training"]
    print(f"machine: {machine()}")
    print(f"model: {model_dir} (preset {training['preset']})")
    for title, section in (
        ("Model path at batch 1", model_path),
        ("ORT intra-op threads (reconstruct, per image)", ort_threads),
        ("Codec stages", codec),
        ("Whole jobs (the floors under the endpoints)", jobs),
    ):
        print(f"\n{title}\n")
        print("\n".join(section(model_dir, args.repeats, args.calls)))


if __name__ == "__main__":
    main()
