"""Latent-space math in numpy: reparameterisation, the prior, interpolation, the likelihoods.

Shapes: B images, D pixels, L latent dimensions, K importance samples.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]
InterpolationMethod = Literal["linear", "slerp"]
# The latent range the API accepts, which validation covers (service.model.loader): GET /v1/sample
# draws z ~ N(0, temperature^2 I) up to MAX_TEMPERATURE; POST /v1/decode takes |z_i| <= MAX_ABS_Z
# (beyond it is no latent code a Gaussian prior would give).
MAX_TEMPERATURE = 10.0
MAX_ABS_Z = 1000.0
_LOG_2PI = math.log(2.0 * math.pi)
_PARALLEL = 1e-9  # below this |sin| between two directions, they are (anti)parallel


def reparameterize(mu: Array, logvar: Array, rng: np.random.Generator) -> Array:
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) (Kingma & Welling 2013, eq. 10)."""
    eps = rng.standard_normal(mu.shape, dtype=np.float32)
    return np.asarray(mu + np.exp(0.5 * logvar) * eps, dtype=np.float32)


def sample_prior(n: int, latent_dim: int, temperature: float, rng: np.random.Generator) -> Array:
    """n draws of z ~ N(0, temperature^2 I): [n, L]."""
    z = rng.standard_normal((n, latent_dim), dtype=np.float32)
    return (z * np.float32(temperature)).astype(np.float32)


def interpolate(z0: Array, z1: Array, steps: int, method: InterpolationMethod) -> Array:
    """`steps` points from z0 to z1 inclusive: [steps, L].

    slerp follows the great circle (White 2016, "Sampling generative networks") while the
    norm goes linearly from |z0| to |z1|: a straight line passes near the origin, where the
    Gaussian prior puts no mass in many dimensions.
    """
    t = np.linspace(0.0, 1.0, steps, dtype=np.float64)[:, None]
    a, b = z0.astype(np.float64), z1.astype(np.float64)
    norm_a, norm_b = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if method == "linear" or norm_a == 0.0 or norm_b == 0.0 or len(a) < 2:
        return ((1 - t) * a + t * b).astype(np.float32)
    radius = (1 - t) * norm_a + t * norm_b
    return (radius * _great_circle(a / norm_a, b / norm_b, t)).astype(np.float32)


def _great_circle(
    u: npt.NDArray[np.float64], v: npt.NDArray[np.float64], t: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Unit vectors along the great circle from unit u to unit v at fractions t [S, 1].

    Antiparallel ends have no one great circle: take the one through a direction orthogonal
    to u (any is as good), rather than the straight line through 0.
    """
    cos = float(np.clip(np.dot(u, v), -1.0, 1.0))
    across = v - cos * u  # v's component orthogonal to u
    sin = float(np.linalg.norm(across))
    if sin > _PARALLEL:
        w = across / sin
    elif cos > 0:
        return np.broadcast_to(u, (len(t), len(u))).copy()  # the same direction
    else:
        w = _orthogonal(u)
    omega = math.atan2(sin, cos)
    return np.cos(t * omega) * u + np.sin(t * omega) * w


def _orthogonal(u: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """A unit vector orthogonal to unit u: the axis u leans on least, minus its u part."""
    axis = np.zeros_like(u)
    axis[int(np.argmin(np.abs(u)))] = 1.0
    w = axis - np.dot(axis, u) * u
    return np.asarray(w / float(np.linalg.norm(w)), dtype=np.float64)


def log_bernoulli(x: Array, logits: Array) -> npt.NDArray[np.float64]:
    """log p(x|z) summed over pixels, stable for any logit: x*l - softplus(l). [..., D] -> [...]."""
    lg = logits.astype(np.float64)
    return np.asarray(np.sum(x * lg - np.logaddexp(0.0, lg), axis=-1), dtype=np.float64)


def log_standard_normal(z: Array) -> npt.NDArray[np.float64]:
    """log N(z; 0, I) summed over the latent axis. [..., L] -> [...]."""
    z64 = z.astype(np.float64)
    return np.asarray(-0.5 * np.sum(z64 * z64 + _LOG_2PI, axis=-1), dtype=np.float64)


def log_normal(z: Array, mu: Array, logvar: Array) -> npt.NDArray[np.float64]:
    """log N(z; mu, diag(exp(logvar))) summed over the latent axis. [..., L] -> [...]."""
    lv = logvar.astype(np.float64)
    d = (z.astype(np.float64) - mu) * np.exp(-0.5 * lv)
    return np.asarray(-0.5 * np.sum(d * d + _LOG_2PI + lv, axis=-1), dtype=np.float64)


def kl_to_prior(mu: Array, logvar: Array) -> npt.NDArray[np.float64]:
    """KL(N(mu, exp(logvar)) || N(0, I)) per image (Kingma & Welling 2013, appendix B)."""
    mu64, lv = mu.astype(np.float64), logvar.astype(np.float64)
    return np.asarray(-0.5 * np.sum(1.0 + lv - mu64 * mu64 - np.exp(lv), axis=-1), dtype=np.float64)


def log_mean_exp(log_w: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """log(mean(exp(log_w))) over the last axis, without overflow. [..., K] -> [...]."""
    peak = np.max(log_w, axis=-1, keepdims=True)
    return np.asarray(
        np.squeeze(peak, -1) + np.log(np.mean(np.exp(log_w - peak), axis=-1)), dtype=np.float64
    )
