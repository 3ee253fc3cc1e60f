"""The model runtime without HTTP: ORT against torch, the latent math, determinism."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.inference.jobs import Draw
from service.model import latent
from service.model.loader import load_runtime
from service.model.manifest import read_manifest
from service.model.runtime import DECODE_CHUNK_ROWS, ModelRuntime
from tests.service.jobs_helpers import alone, job
from training.config import TrainConfig
from training.model import VAE

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def runtime(published: dict[str, Path]) -> ModelRuntime:
    path = published["a"]
    return load_runtime(path, read_manifest(path), threads=1, source="repository")


@pytest.fixture(scope="module")
def torch_model() -> VAE:
    cfg = TrainConfig.from_preset("tiny", seed=0)
    torch.manual_seed(0)
    return VAE(cfg).eval()


def binary_images(count: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((count, 784)) > 0.7).astype(np.float32)


def test_encode_and_decode_match_the_torch_model(runtime: ModelRuntime, torch_model: VAE) -> None:
    x = binary_images(5)
    mu, logvar = runtime.encode(x)
    with torch.no_grad():
        t_mu, t_logvar = torch_model.encode(torch.from_numpy(x))
        t_logits = torch_model.decode(t_mu)
    logits, probs = runtime.decode_logits(mu)
    assert np.allclose(mu, t_mu.numpy(), atol=TOLERANCE)
    assert np.allclose(logvar, t_logvar.numpy(), atol=TOLERANCE)
    assert np.allclose(logits, t_logits.numpy(), atol=TOLERANCE)
    assert np.allclose(probs, torch.sigmoid(t_logits).numpy(), atol=TOLERANCE)


def test_decode_in_chunks_equals_decode_at_once(runtime: ModelRuntime) -> None:
    z = np.random.default_rng(1).standard_normal((DECODE_CHUNK_ROWS + 3, 8), dtype=np.float32)
    chunked = runtime.decode(z)
    assert chunked.shape == (len(z), 784)
    assert np.allclose(chunked[-3:], runtime.decode(z[-3:]), atol=1e-6)


def test_same_seed_same_draws_and_different_seed_different(runtime: ModelRuntime) -> None:
    x = binary_images(2)
    first, again, other = (alone(job(runtime, x, Draw(seed))).probs for seed in (7, 7, 8))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    z1, _ = runtime.sample(4, 1.0, np.random.default_rng(3))
    z2, _ = runtime.sample(4, 1.0, np.random.default_rng(3))
    assert np.array_equal(z1, z2)


def test_mean_reconstruction_decodes_mu(runtime: ModelRuntime) -> None:
    x = binary_images(3)
    mu, _, probs = runtime.reconstruct_mean(x)
    assert np.array_equal(mu, runtime.encode(x)[0])
    np.testing.assert_allclose(probs, runtime.decode(mu), atol=1e-4, rtol=0)  # fused or not


def test_temperature_zero_samples_the_prior_mean(runtime: ModelRuntime) -> None:
    z, probs = runtime.sample(3, 0.0, np.random.default_rng(0))
    assert np.all(z == 0) and np.allclose(probs, probs[0])


def test_log_weights_agree_with_torch_distributions(torch_model: VAE) -> None:
    rng = np.random.default_rng(0)
    x = binary_images(1)[0]
    mu, logvar = (
        rng.standard_normal(8).astype(np.float32),
        rng.standard_normal(8).astype(np.float32),
    )
    z = latent.reparameterize(mu, logvar, rng)
    logits = rng.standard_normal(784).astype(np.float32) * 5
    bernoulli = torch.distributions.Bernoulli(logits=torch.from_numpy(logits))
    normal = torch.distributions.Normal(
        torch.from_numpy(mu), torch.exp(0.5 * torch.from_numpy(logvar))
    )
    prior = torch.distributions.Normal(torch.zeros(8), torch.ones(8))
    zt = torch.from_numpy(z)
    assert math.isclose(
        latent.log_bernoulli(x, logits),
        bernoulli.log_prob(torch.from_numpy(x)).sum().item(),
        rel_tol=1e-5,
    )
    assert math.isclose(
        latent.log_normal(z, mu, logvar), normal.log_prob(zt).sum().item(), rel_tol=1e-5
    )
    assert math.isclose(
        latent.log_standard_normal(z), prior.log_prob(zt).sum().item(), rel_tol=1e-5
    )
    kl = torch.distributions.kl_divergence(normal, prior).sum().item()
    assert math.isclose(latent.kl_to_prior(mu, logvar), kl, rel_tol=1e-5)


def test_log_bernoulli_is_finite_for_extreme_logits() -> None:
    logits = np.array([-1e4, 1e4, 0.0], dtype=np.float32)
    value = latent.log_bernoulli(np.array([0.0, 1.0, 1.0], dtype=np.float32), logits)
    assert math.isclose(value, math.log(0.5), rel_tol=1e-6)


def test_log_mean_exp_is_stable() -> None:
    assert math.isclose(latent.log_mean_exp(np.array([1000.0, 1000.0])), 1000.0)
    assert math.isclose(
        latent.log_mean_exp(np.array([-1000.0, -1000.0 + math.log(3)])), -1000.0 + math.log(2)
    )


def test_scores_are_consistent(runtime: ModelRuntime) -> None:
    x = binary_images(4)
    scores = runtime.score(x, 200, np.random.default_rng(0))
    assert np.allclose(scores.neg_elbo, scores.reconstruction + scores.kl)
    # The importance-weighted bound is tighter than the ELBO (Burda et al. 2015, theorem 1);
    # with the same draws, log-mean-exp >= mean by Jensen, so this holds exactly.
    assert np.all(scores.iwae_nll <= scores.neg_elbo + 1e-9)
    assert np.all(scores.kl >= 0) and np.all(np.isfinite(scores.iwae_nll))
    one = runtime.score(x, 1, np.random.default_rng(0))
    # For k = 1 the two differ by exactly log q(z|x) - log p(z) - KL at the one draw.
    assert np.allclose(one.iwae_nll, one.neg_elbo + _log_ratio(runtime, x))


def _log_ratio(runtime: ModelRuntime, x: np.ndarray) -> np.ndarray:
    """For k = 1: log q(z|x) - log p(z) at the one draw (the same seed gives the same z)."""
    mu, logvar = runtime.encode(x)
    z = latent.reparameterize(mu[:, None], logvar[:, None], np.random.default_rng(0))[:, 0]
    return (
        latent.log_normal(z, mu, logvar)
        - latent.log_standard_normal(z)
        - latent.kl_to_prior(mu, logvar)
    )


def test_score_estimate_matches_a_direct_monte_carlo(runtime: ModelRuntime) -> None:
    """NLL_k computed by hand from independent draws agrees with the runtime within noise."""
    x = binary_images(1, seed=3)
    k = 2000
    mu, logvar = runtime.encode(x)
    rng = np.random.default_rng(11)
    z = latent.reparameterize(np.repeat(mu, k, 0), np.repeat(logvar, k, 0), rng)
    logits, _ = runtime.decode_logits(z)
    log_w = (
        latent.log_bernoulli(x, logits)
        + latent.log_standard_normal(z)
        - latent.log_normal(z, mu, logvar)
    )
    by_hand = -latent.log_mean_exp(log_w)
    estimate = runtime.score(x, k, np.random.default_rng(12)).iwae_nll[0]
    assert abs(estimate - by_hand) < 0.5


def test_interpolation_ends_at_the_end_points() -> None:
    a, b = np.full(8, -1.0, np.float32), np.arange(8, dtype=np.float32)
    for method in ("linear", "slerp"):
        path = latent.interpolate(a, b, 5, method)
        assert path.shape == (5, 8)
        assert np.allclose(path[0], a, atol=1e-5) and np.allclose(path[-1], b, atol=1e-5)
    norms = np.linalg.norm(
        latent.interpolate(
            np.eye(8, dtype=np.float32)[0], np.eye(8, dtype=np.float32)[1], 5, "slerp"
        ),
        axis=1,
    )
    assert np.allclose(norms, 1.0, atol=1e-5)  # slerp stays on the sphere


def _angles(path: np.ndarray) -> np.ndarray:
    """The angle between consecutive points of a path [S, L]: constant along a great circle."""
    unit = path / np.linalg.norm(path, axis=1, keepdims=True)
    return np.arccos(np.clip(np.sum(unit[1:] * unit[:-1], axis=1), -1.0, 1.0))


@pytest.mark.parametrize(
    "end",
    [
        lambda a: -a,  # exactly opposite
        lambda a: -a + np.eye(len(a))[0] * 1e-4,  # all but opposite
        lambda a: -2.5 * a,  # opposite, of another norm
    ],
    ids=["opposite", "nearly-opposite", "opposite-longer"],
)
def test_slerp_between_opposite_vectors_keeps_off_the_origin(end: Any) -> None:
    """Opposite ends have no one great circle; the path must not cut through 0 (it used to:
    the midpoint of slerp(a, -a) had norm 0), and its norm goes linearly from |a| to |b|."""
    a = np.random.default_rng(0).standard_normal(8).astype(np.float32)
    b = np.asarray(end(a), dtype=np.float32)
    path = latent.interpolate(a, b, 9, "slerp").astype(np.float64)
    t = np.linspace(0.0, 1.0, 9)
    expected = (1 - t) * np.linalg.norm(a) + t * np.linalg.norm(b)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), expected, rtol=1e-5)
    assert np.allclose(path[0], a, atol=1e-5) and np.allclose(path[-1], b, atol=1e-4)
    np.testing.assert_allclose(_angles(path), math.pi / 8, rtol=1e-4)  # evenly along a half
    assert abs(np.dot(path[4], a)) < 1e-3 * np.linalg.norm(a) ** 2  # halfway: orthogonal to a


def test_slerp_interpolates_the_norm_along_the_great_circle() -> None:
    rng = np.random.default_rng(1)
    a, b = (
        rng.standard_normal(16).astype(np.float32),
        3 * rng.standard_normal(16).astype(np.float32),
    )
    path = latent.interpolate(a, b, 7, "slerp").astype(np.float64)
    t = np.linspace(0.0, 1.0, 7)
    expected = (1 - t) * np.linalg.norm(a) + t * np.linalg.norm(b)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), expected, rtol=1e-5)
    np.testing.assert_allclose(_angles(path), _angles(path)[0], rtol=1e-4)
    # every point lies in the plane of a and b
    basis, _ = np.linalg.qr(np.stack([a, b], axis=1).astype(np.float64))
    np.testing.assert_allclose(basis @ (basis.T @ path.T), path.T, atol=1e-4)
