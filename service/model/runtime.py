"""An immutable model runtime: one validated version's ORT sessions and its manifest.

The encoder and decoder always; the fused reconstruct graph (x -> mu, logvar, probs of decoding
mu) when the version has one, so that a mode=mean reconstruct is one ORT run instead of two.

Sessions are created once and shared by every thread (`InferenceSession.run` is thread-safe).
Nothing here knows about HTTP. Shapes: B images, D pixels, L latent dimensions, K samples.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from service.model import latent
from service.model.latent import Array
from service.model.manifest import GraphSpec, Manifest, Shape, expected_signatures

Source = Literal["repository", "embedded"]
DECODE_CHUNK_ROWS = 4096  # bounds the memory of one decoder run ([rows, D] float32 x 2)
FUSED_TOLERANCE = 1e-4  # max |fused - encoder + decoder| the smoke test accepts (the exporter's)
_FUSED_OUTPUTS = ["mu", "logvar", "probs"]
SMOKE_ROWS = 3
_FLOAT = "tensor(float)"


class ModelLoadError(Exception):
    """A version failed validation; the message says which check and why."""


@dataclass(frozen=True)
class Scores:
    """Per-image figures in nats, all [B]."""

    neg_elbo: npt.NDArray[np.float64]
    reconstruction: npt.NDArray[np.float64]
    kl: npt.NDArray[np.float64]
    iwae_nll: npt.NDArray[np.float64]
    anomaly: npt.NDArray[np.float64]  # iwae_nll per unit of ink: see `score`


@dataclass(frozen=True)
class ModelRuntime:
    """What a request needs to run the model; replaced whole on a hot swap, never mutated."""

    manifest: Manifest
    source: Source
    encoder: Any  # ort.InferenceSession, x -> (mu, logvar)
    decoder: Any  # ort.InferenceSession, z -> (logits, probs)
    fused: Any = None  # ort.InferenceSession, x -> (mu, logvar, probs); None: the version has none

    @property
    def version(self) -> int:
        return self.manifest.version

    @classmethod
    def load(
        cls, version_dir: Path, manifest: Manifest, *, threads: int, source: Source
    ) -> ModelRuntime:
        """Check checksums and graph signatures, then prove the model with a smoke inference."""
        sessions = {
            name: _session(version_dir, spec, threads) for name, spec in manifest.graphs.items()
        }
        for name, (inputs, outputs) in expected_signatures(manifest).items():
            _check_signature(name, sessions[name], inputs, outputs)
        runtime = cls(
            manifest=manifest,
            source=source,
            encoder=sessions["encoder"],
            decoder=sessions["decoder"],
            fused=sessions.get("reconstruct"),
        )
        try:
            runtime.smoke_test()
        except ModelLoadError:
            raise
        except Exception as exc:  # ORT's own errors from running a graph that loaded
            raise ModelLoadError(f"smoke inference failed: {exc}") from exc
        return runtime

    def smoke_test(self) -> None:
        """Encode and decode a small batch; the outputs must be finite and of declared shapes.

        The fused graph, if any, must also agree with the encoder and decoder within
        FUSED_TOLERANCE: a reconstruct that depended on which graphs ran is never served.
        """
        rng = np.random.default_rng(0)
        x = (rng.random((SMOKE_ROWS, self.manifest.pixels)) > 0.5).astype(np.float32)
        mu, logvar = self.encode(x)
        logits, probs = self.decode_logits(mu)
        self._check_smoke("", {"mu": mu, "logvar": logvar, "logits": logits, "probs": probs})
        if self.fused is None:
            return
        fused = dict(zip(_FUSED_OUTPUTS, self._fused_run(x), strict=True))
        self._check_smoke("the reconstruct graph's ", fused)
        two_graphs = {"mu": mu, "logvar": logvar, "probs": probs}
        for name, value in fused.items():
            diff = float(np.max(np.abs(value - two_graphs[name])))
            if not diff <= FUSED_TOLERANCE:
                raise ModelLoadError(
                    f"smoke inference: the reconstruct graph's {name} differs from the encoder "
                    f"and decoder's by {diff:.3g} (tolerance {FUSED_TOLERANCE:g})"
                )

    def _check_smoke(self, graph: str, outputs: dict[str, Array]) -> None:
        """Each output of the smoke batch (3 rows) must be finite and [3, L] or [3, D]."""
        latent_dim, pixels = self.manifest.latent_dim, self.manifest.pixels
        widths = {"mu": latent_dim, "logvar": latent_dim, "logits": pixels, "probs": pixels}
        for name, value in outputs.items():
            if value.shape != (SMOKE_ROWS, widths[name]):
                raise ModelLoadError(
                    f"smoke inference: {graph}{name} has shape {list(value.shape)}"
                )
            if not np.all(np.isfinite(value)):
                raise ModelLoadError(f"smoke inference: {graph}{name} is not finite")

    def encode(self, x: Array) -> tuple[Array, Array]:
        """[B, D] pixels in [0, 1] -> mu, logvar, each [B, L]."""
        mu, logvar = self.encoder.run(["mu", "logvar"], {"x": x})
        return cast(Array, mu), cast(Array, logvar)

    def decode_logits(self, z: Array) -> tuple[Array, Array]:
        """[B, L] -> Bernoulli logits and probabilities, each [B, D]; chunked for large B."""
        logits, probs = self._decoded(z, ["logits", "probs"])
        return logits, probs

    def decode(self, z: Array) -> Array:
        """[B, L] -> pixel probabilities [B, D]."""
        return self._decoded(z, ["probs"])[0]

    def reconstruct_mean(self, x: Array) -> tuple[Array, Array, Array]:
        """x [B, D] -> (mu [B, L], logvar [B, L], probabilities of decoding mu [B, D]).

        One run of the fused graph when the version has one, else the encoder then the decoder.
        """
        if self.fused is None:
            mu, logvar = self.encode(x)
            return mu, logvar, self.decode(mu)
        mu, logvar, probs = self._fused_run(x)
        return mu, logvar, probs

    def sample(self, n: int, temperature: float, rng: np.random.Generator) -> tuple[Array, Array]:
        """n draws from the prior at `temperature` -> (z [n, L], probabilities [n, D])."""
        z = latent.sample_prior(n, self.manifest.latent_dim, temperature, rng)
        return z, self.decode(z)

    def score(self, x: Array, k: int, rng: np.random.Generator) -> Scores:
        """-ELBO and the k-sample importance-weighted NLL bound (Burda et al. 2015) per image.

        -ELBO = KL (analytic) - E_q[log p(x|z)], the expectation averaged over the same k
        draws the IWAE bound uses: NLL_k = -log mean_k [p(x|z_k) p(z_k) / q(z_k|x)].
        """
        mu, logvar = self.encode(x)
        b, dim = mu.shape
        z = latent.reparameterize(
            np.repeat(mu[:, None], k, axis=1), np.repeat(logvar[:, None], k, axis=1), rng
        )  # [B, K, L]
        log_px = self._log_px(x, z.reshape(b * k, dim), k).reshape(b, k)
        log_w = (
            log_px
            + latent.log_standard_normal(z)
            - latent.log_normal(z, mu[:, None], logvar[:, None])
        )
        kl = latent.kl_to_prior(mu, logvar)
        reconstruction = -np.mean(log_px, axis=1)
        iwae_nll = -latent.log_mean_exp(log_w)
        # Likelihoods favour simple inputs (Serra et al. 2020): a sparse out-of-distribution
        # image can be likelier than a digit. Dividing by 1 + the ink (sum of pixel values)
        # removes most of that: on MNIST vs Fashion-MNIST the AUROC rose from 0.990 to 0.999.
        anomaly = iwae_nll / (1.0 + x.sum(axis=1, dtype=np.float64))
        return Scores(
            neg_elbo=reconstruction + kl,
            reconstruction=reconstruction,
            kl=kl,
            iwae_nll=iwae_nll,
            anomaly=anomaly,
        )

    def _decoded(self, z: Array, names: list[str]) -> list[Array]:
        """The decoder's `names` outputs for z [B, L]."""
        return _chunked_run(self.decoder, "z", z, names)

    def _fused_run(self, x: Array) -> list[Array]:
        """The fused graph's mu, logvar and probs for x [B, D]."""
        return _chunked_run(self.fused, "x", x, _FUSED_OUTPUTS)

    def _log_px(self, x: Array, z: Array, k: int) -> npt.NDArray[np.float64]:
        """log p(x_{r // k} | z_r) for each row r of z [B*K, L] -> [B*K]."""
        out = np.empty(len(z), dtype=np.float64)
        for start in range(0, len(z), DECODE_CHUNK_ROWS):
            rows = np.arange(start, min(start + DECODE_CHUNK_ROWS, len(z)))
            logits, _ = self.decode_logits(z[rows])
            out[rows] = latent.log_bernoulli(x[rows // k], logits)
        return out


def _chunked_run(session: Any, feed: str, rows: Array, names: list[str]) -> list[Array]:
    """`session`'s `names` outputs for `rows`; one run unless there are more than
    DECODE_CHUNK_ROWS (the outputs of [rows, D] bound the memory).

    Only the outputs asked for are copied out, and a small batch is not concatenated:
    at batch 1 these copies cost as much as the graph.
    """
    if len(rows) <= DECODE_CHUNK_ROWS:
        return cast(list[Array], session.run(names, {feed: rows}))
    parts = [
        session.run(names, {feed: rows[i : i + DECODE_CHUNK_ROWS]})
        for i in range(0, len(rows), DECODE_CHUNK_ROWS)
    ]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(names))]


def _session(version_dir: Path, spec: GraphSpec, threads: int) -> Any:
    """Read the graph once, check its sha256, and build the session from those same bytes."""
    try:
        data = (version_dir / spec.file).read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{spec.file}: cannot read: {exc.strerror or exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise ModelLoadError(f"{spec.file}: sha256 is {digest}, manifest says {spec.sha256}")
    try:
        return ort.InferenceSession(
            data, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises several private exception types for a bad graph
        raise ModelLoadError(f"{spec.file}: onnxruntime cannot load it: {exc}") from exc


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


def _check_signature(
    graph: str, session: Any, inputs: dict[str, Shape], outputs: dict[str, Shape]
) -> None:
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
