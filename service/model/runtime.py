"""An immutable model runtime: one validated version's ORT sessions and its manifest.

The encoder and decoder always; the fused reconstruct graph (x -> mu, logvar, probs of decoding
mu) when the version has one, so that a mode=mean reconstruct is one ORT run instead of two.

Sessions are created once and shared by every thread (`InferenceSession.run` is thread-safe);
`service.model.loader` builds and proves them. Every run's outputs are checked for NaN and infinity:
a broken model raises NonFiniteOutputError instead of answering with them. Nothing here
knows about HTTP. Shapes: B images, D pixels, L latent dimensions, K samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, cast

import numpy as np
import numpy.typing as npt

from service.model import latent
from service.model.density import LatentDensity
from service.model.latent import Array
from service.model.manifest import Manifest

Source = Literal["repository", "embedded"]
Prior = Literal["standard", "fitted"]
DECODE_CHUNK_ROWS = 4096  # bounds the memory of one decoder run ([rows, D] float32 x 2)
_ENCODER_OUTPUTS = ["mu", "logvar"]
_FUSED_OUTPUTS = ["mu", "logvar", "probs"]


class NonFiniteOutputError(Exception):
    """A graph gave NaN or infinity: the model is broken, not the request that ran it."""

    def __init__(self, version: int, graph: str, output: str) -> None:
        super().__init__(f"model version {version}: the {graph} graph's {output} is not finite")
        self.version = version
        self.graph = graph  # encoder, decoder or reconstruct
        self.output = output


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
    density: LatentDensity | None = None  # the fitted latent density; None: the version has none
    # Called, from the thread that ran the graph, before a NonFiniteOutputError is raised: the
    # watcher then withdraws this version (service.watcher). None while it is validated.
    report: Callable[[NonFiniteOutputError], None] | None = None

    @property
    def version(self) -> int:
        return self.manifest.version

    def encode(self, x: Array) -> tuple[Array, Array]:
        """[B, D] pixels in [0, 1] -> mu, logvar, each [B, L]."""
        mu, logvar = self._finite(
            "encoder", _ENCODER_OUTPUTS, self.encoder.run(_ENCODER_OUTPUTS, {"x": x})
        )
        return mu, logvar

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

    @property
    def default_prior(self) -> Prior:
        """The fitted density when the version has one, else N(0, I)."""
        return "standard" if self.density is None else "fitted"

    def sample(
        self,
        n: int,
        temperature: float,
        rng: np.random.Generator,
        prior: Prior = "standard",
        digit: int | None = None,
    ) -> tuple[Array, Array]:
        """n draws at `temperature` -> (z [n, L], probabilities [n, D]): from N(0, I), or from
        the fitted density (its mixture, or digit `digit`'s Gaussian), which the caller has
        checked the version has."""
        if prior == "standard":
            z = latent.sample_prior(n, self.manifest.latent_dim, temperature, rng)
        else:
            assert self.density is not None
            z = self.density.sample(n, temperature, rng, digit)
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
        return self._finite("decoder", names, _chunked_run(self.decoder, "z", z, names))

    def _fused_run(self, x: Array) -> list[Array]:
        """The fused graph's mu, logvar and probs for x [B, D]."""
        return self._finite(
            "reconstruct", _FUSED_OUTPUTS, _chunked_run(self.fused, "x", x, _FUSED_OUTPUTS)
        )

    def _finite(self, graph: str, names: list[str], outputs: list[Array]) -> list[Array]:
        """`outputs` of one run, each checked for NaN and infinity: a model that gives them is
        broken, and no response may carry them. About a fifth of a batch-1 run, per numpy
        call rather than per value (docs/benchmarks.md, model path)."""
        for name, value in zip(names, outputs, strict=True):
            if not np.isfinite(value).all():
                self._broken(graph, name)
        return outputs

    def _broken(self, graph: str, output: str) -> NoReturn:
        error = NonFiniteOutputError(self.version, graph, output)
        if self.report is not None:
            self.report(error)
        raise error

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
