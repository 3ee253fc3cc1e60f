"""Loading a model version: its graphs read and checked, then proven on a spread of inputs.

One small batch proves little: a decoder can be finite near z = 0 and NaN at the |z| that
GET /v1/sample?temperature=10 or POST /v1/decode reach. So each graph runs on inputs that
span what the API can feed it, and every output must be finite and of its declared shape:

- images (encoder, fused graph): blank (all 0), all ink (all 1), random binary, random grey;
- latents (decoder): z = 0; the prior at temperature 1 and at the API's largest temperature;
  the corners, the axes and the inside of the box |z_i| <= MAX_ABS_Z that decode accepts;
  the mu and the sampled z that reconstruct and encode derive from the images above.

The fused graph must agree with the encoder and decoder on the images within FUSED_TOLERANCE.
Sampling cannot prove a graph finite everywhere, so every later run is checked as well
(`service.runtime`). Shapes: N rows, D pixels, L latent dimensions.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.model.density import (
    DIGITS,
    MAX_DENSITY_BYTES,
    DensityError,
    LatentDensity,
    parse_density,
)
from service.model.files import UnreadableFileError, read_regular
from service.model.latent import MAX_ABS_Z, MAX_TEMPERATURE, Array, reparameterize, sample_prior
from service.model.manifest import FileSpec, GraphSpec, Manifest, Shape, expected_signatures
from service.model.runtime import ModelRuntime, NonFiniteOutputError, Source

FUSED_TOLERANCE = 1e-4  # max |fused - encoder + decoder| accepted (the exporter's)
# A graph is read whole into memory before onnxruntime sees it. The default model's graphs
# are under 2 MB; protobuf itself stops at 2 GiB.
MAX_GRAPH_BYTES = 2**29
_FLOAT = "tensor(float)"


class ModelLoadError(Exception):
    """A version failed validation; the message says which check and why."""


@dataclass(frozen=True)
class Probe:
    """Rows for one graph, and the words a rejection uses for them."""

    label: str
    rows: Array


def load_runtime(
    version_dir: Path,
    manifest: Manifest,
    *,
    threads: int,
    source: Source,
    report: Callable[[NonFiniteOutputError], None] | None = None,
) -> ModelRuntime:
    """Check checksums and graph signatures, prove the model on the spread of inputs, and
    return its runtime, which calls `report` when a later run gives a non-finite output."""
    sessions = {
        name: _session(version_dir, spec, threads) for name, spec in manifest.graphs.items()
    }
    for name, (inputs, outputs) in expected_signatures(manifest).items():
        check_signature(name, sessions[name], inputs, outputs)
    runtime = ModelRuntime(
        manifest=manifest,
        source=source,
        encoder=sessions["encoder"],
        decoder=sessions["decoder"],
        fused=sessions.get("reconstruct"),
        density=_density(version_dir, manifest.density, manifest.latent_dim),
    )
    validate(runtime)
    return dataclasses.replace(runtime, report=report)


def image_probes(pixels: int, rng: np.random.Generator) -> list[Probe]:
    """Edge and random images, [N, D] each."""
    return [
        Probe("a blank image (all 0)", np.zeros((1, pixels), np.float32)),
        Probe("an all-ink image (all 1)", np.ones((1, pixels), np.float32)),
        Probe("random binary images", (rng.random((4, pixels)) > 0.5).astype(np.float32)),
        Probe("random grey images", rng.random((4, pixels), dtype=np.float32)),
    ]


def latent_probes(latent_dim: int, rng: np.random.Generator) -> list[Probe]:
    """Latents across the range the API accepts, [N, L] each."""
    box = np.float32(MAX_ABS_Z)
    ones = np.ones(latent_dim, np.float32)
    alternating = np.where(np.arange(latent_dim) % 2 == 0, box, -box).astype(np.float32)
    axes = np.concatenate([np.eye(latent_dim), -np.eye(latent_dim)]).astype(np.float32) * box
    return [
        Probe("z = 0", np.zeros((1, latent_dim), np.float32)),
        Probe("z from the prior", sample_prior(8, latent_dim, 1.0, rng)),
        Probe(
            f"z from the prior at temperature {MAX_TEMPERATURE:g}",
            sample_prior(8, latent_dim, MAX_TEMPERATURE, rng),
        ),
        Probe(
            f"z at the corners of |z_i| <= {MAX_ABS_Z:g}",
            np.stack([ones * box, -ones * box, alternating, -alternating]),
        ),
        Probe(f"z on the axes at +-{MAX_ABS_Z:g}", axes),
        Probe(
            f"z uniform in |z_i| <= {MAX_ABS_Z:g}",
            rng.uniform(-MAX_ABS_Z, MAX_ABS_Z, (8, latent_dim)).astype(np.float32),
        ),
    ]


def density_probes(density: LatentDensity, rng: np.random.Generator) -> list[Probe]:
    """Draws from the fitted density at temperatures 1 and the largest, for every digit too."""
    probes = []
    for temperature in (1.0, MAX_TEMPERATURE):
        probes.append(
            Probe(
                f"z from the fitted density at temperature {temperature:g}",
                density.sample(8, temperature, rng),
            )
        )
        digits = [density.sample(1, temperature, rng, digit=d) for d in range(DIGITS)]
        probes.append(
            Probe(
                f"z from each digit's fitted Gaussian at temperature {temperature:g}",
                np.concatenate(digits),
            )
        )
    return probes


def validate(runtime: ModelRuntime) -> None:
    """Run every graph on the spread; raise ModelLoadError naming the graph and the inputs.

    The latents the API takes go first (with draws from the fitted density, when the version
    has one), then the images and the latents derived from them.
    """
    rng = np.random.default_rng(0)
    manifest = runtime.manifest
    probes = latent_probes(manifest.latent_dim, rng)
    if runtime.density is not None:
        probes += density_probes(runtime.density, rng)
    for probe in probes:
        _run(runtime, "decoder", probe, runtime.decode_logits)
    for probe in image_probes(manifest.pixels, rng):
        mu, logvar = _run(runtime, "encoder", probe, runtime.encode)
        _, probs = _run(
            runtime, "decoder", Probe(f"the mu of {probe.label}", mu), runtime.decode_logits
        )
        if runtime.fused is not None:
            _check_fused(runtime, probe, (mu, logvar, probs))
        z = reparameterize(mu, logvar, rng)
        _run(
            runtime,
            "decoder",
            Probe(f"z drawn from q(z|x) of {probe.label}", z),
            runtime.decode_logits,
        )


def _run(
    runtime: ModelRuntime,
    graph: str,
    probe: Probe,
    run: Callable[[Array], tuple[Array, ...] | list[Array]],
) -> tuple[Array, ...] | list[Array]:
    """`run` on the probe's rows; each output must be finite and [N, its width]."""
    try:
        outputs = run(probe.rows)
    except NonFiniteOutputError as exc:
        raise ModelLoadError(
            f"validation: the {exc.graph} graph's {exc.output} is not finite for {probe.label}"
        ) from exc
    except Exception as exc:  # ORT's own errors from running a graph that loaded
        raise ModelLoadError(
            f"validation: the {graph} graph failed on {probe.label}: {exc}"
        ) from exc
    for (name, width), value in zip(_widths(runtime)[graph], outputs, strict=True):
        if value.shape != (len(probe.rows), width):
            raise ModelLoadError(
                f"validation: the {graph} graph's {name} has shape {list(value.shape)} for "
                f"{len(probe.rows)} rows of {probe.label}"
            )
    return outputs


def _check_fused(
    runtime: ModelRuntime, probe: Probe, two_graphs: tuple[Array, Array, Array]
) -> None:
    """The fused graph must agree with the encoder's (mu, logvar) and the decoder's probs of
    mu on `probe`."""
    fused = _run(runtime, "reconstruct", probe, runtime.reconstruct_mean)
    for name, ours, theirs in zip(("mu", "logvar", "probs"), fused, two_graphs, strict=True):
        diff = float(np.max(np.abs(ours - theirs)))
        if not diff <= FUSED_TOLERANCE:
            raise ModelLoadError(
                f"validation: the reconstruct graph's {name} differs from the encoder and "
                f"decoder's by {diff:.3g} on {probe.label} (tolerance {FUSED_TOLERANCE:g})"
            )


def _widths(runtime: ModelRuntime) -> dict[str, list[tuple[str, int]]]:
    """Each graph's outputs, in the order the runtime returns them, with their widths."""
    latent_dim, pixels = runtime.manifest.latent_dim, runtime.manifest.pixels
    latent = [("mu", latent_dim), ("logvar", latent_dim)]
    return {
        "encoder": latent,
        "decoder": [("logits", pixels), ("probs", pixels)],
        "reconstruct": [*latent, ("probs", pixels)],
    }


def _session(version_dir: Path, spec: GraphSpec, threads: int) -> Any:
    """Read the graph once, check its sha256, and build the session from those same bytes."""
    data = _checked_bytes(version_dir, spec, MAX_GRAPH_BYTES)
    try:
        return ort.InferenceSession(
            data, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises several private exception types for a bad graph
        raise ModelLoadError(f"{spec.file}: onnxruntime cannot load it: {exc}") from exc


def _density(version_dir: Path, spec: FileSpec | None, latent_dim: int) -> LatentDensity | None:
    """The version's fitted latent density, checked like a graph, or None if it has none."""
    if spec is None:
        return None
    data = _checked_bytes(version_dir, spec, MAX_DENSITY_BYTES)
    try:
        return parse_density(data, latent_dim)
    except DensityError as exc:
        raise ModelLoadError(f"{spec.file}: {exc}") from exc


def _checked_bytes(version_dir: Path, spec: GraphSpec | FileSpec, limit: int) -> bytes:
    """The file's bytes, read once, whose sha256 must be the manifest's."""
    try:
        data = read_regular(version_dir / spec.file, limit)
    except UnreadableFileError as exc:
        raise ModelLoadError(f"{spec.file}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise ModelLoadError(f"{spec.file}: sha256 is {digest}, manifest says {spec.sha256}")
    return data


def session_options(threads: int) -> Any:
    """One intra-op pool of `threads`, no inter-op pool, no spinning when idle.

    Idle sessions' spinning threads steal the other core (DESIGN.md, runtime rules).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def check_signature(
    graph: str, session: Any, inputs: dict[str, Shape], outputs: dict[str, Shape]
) -> None:
    """The session's input and output names, types and shapes must be the contract's."""
    actual = {
        "inputs": {a.name: (a.shape, a.type) for a in session.get_inputs()},
        "outputs": {a.name: (a.shape, a.type) for a in session.get_outputs()},
    }
    for kind, expected in (("inputs", inputs), ("outputs", outputs)):
        names = sorted(actual[kind])
        if names != sorted(expected):
            raise ModelLoadError(f"{graph} {kind} are {names}, expected {sorted(expected)}")
        for name, shape in expected.items():
            got_shape, got_type = actual[kind][name]
            if got_type != _FLOAT or not _shape_matches(got_shape, shape):
                raise ModelLoadError(
                    f"{graph} {kind[:-1]} {name!r} is {got_type} {list(got_shape)}, "
                    f"expected float32 {list(shape)}"
                )


def _shape_matches(actual: list[object], expected: Shape) -> bool:
    """Fixed axes must be equal; the declared batch axis must be symbolic in the graph."""
    if len(actual) != len(expected):
        return False
    return all(
        (isinstance(want, str) and not isinstance(got, int)) or got == want
        for got, want in zip(actual, expected, strict=True)
    )
