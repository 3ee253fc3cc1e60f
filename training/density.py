"""The latent density a version publishes beside its graphs (read by service.model.density).

Samples from N(0, I) land in the prior's "holes", where the encoder put no training image,
and about a quarter of them are no digit. After training, the training images are encoded
to their posterior means and two densities are fitted to those codes (ex-post density
estimation, Ghosh et al. 2020):

- a Gaussian mixture with full covariances (scikit-learn's GaussianMixture), for
  unconditional samples. Its number of components is chosen on the validation split: each
  candidate is fitted on the training codes, and the one whose mixture gives the validation
  codes the highest mean log-likelihood wins (more components fit the training codes ever
  better; held-out codes stop gaining once the mixture starts to memorise);
- one full-covariance Gaussian per digit class (the codes' mean and covariance), for
  samples of a chosen digit.

Each Gaussian is stored as its mean and the lower Cholesky factor of its covariance.
Shapes: N codes, K components, L latent dimensions.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from training.loss import Encodes

log = logging.getLogger(__name__)

DENSITY_FILE = "density.npz"
DIGITS = 10
CANDIDATE_COMPONENTS = (10, 20, 40, 80)
REG_COVAR = 1e-4  # added to every covariance's diagonal (codes' variances are ~1e-2..1)
MAX_EM_ITERATIONS = 200
ENCODE_BATCH = 5_000


@dataclass(frozen=True)
class DensityFit:
    """The arrays of the density file, and how they were chosen (for the manifest)."""

    arrays: dict[str, np.ndarray]
    summary: dict[str, Any]

    def to_bytes(self) -> bytes:
        """The .npz file's bytes: compressed float32 arrays, no pickles."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, allow_pickle=False, **self.arrays)
        return buffer.getvalue()


@torch.no_grad()
def posterior_means(model: Encodes, x: torch.Tensor) -> np.ndarray:
    """The encoder's mu for binarised images x [N, D] -> [N, L] float64."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    parts = [model.encode(x[i : i + ENCODE_BATCH])[0] for i in range(0, len(x), ENCODE_BATCH)]
    return torch.cat(parts).double().numpy()


def fit_density(
    train_codes: np.ndarray,
    train_labels: np.ndarray,
    validation_codes: np.ndarray,
    candidates: tuple[int, ...] = CANDIDATE_COMPONENTS,
    seed: int = 0,
) -> DensityFit:
    """The mixture (components chosen on the validation codes) and the per-digit Gaussians."""
    best, scores = _best_mixture(train_codes, validation_codes, candidates, seed)
    class_means, class_cholesky, fallback = _class_gaussians(train_codes, train_labels)
    arrays = {
        "mixture_weights": best.weights_.astype(np.float32),
        "mixture_means": best.means_.astype(np.float32),
        "mixture_cholesky": np.linalg.cholesky(best.covariances_).astype(np.float32),
        "class_means": class_means.astype(np.float32),
        "class_cholesky": class_cholesky.astype(np.float32),
    }
    summary = {
        "file": DENSITY_FILE,
        "method": "ex-post Gaussian mixture over the training images' posterior means",
        "components": best.n_components,
        "validation_log_likelihood": {str(k): round(v, 4) for k, v in scores.items()},
        "selection": "each candidate fitted on the training codes; the highest mean validation "
        "log-likelihood chosen",
        "training_codes": len(train_codes),
        "validation_codes": len(validation_codes),
        "reg_covar": REG_COVAR,
        "classes_without_codes": fallback,
    }
    return DensityFit(arrays=arrays, summary=summary)


def _best_mixture(
    train_codes: np.ndarray,
    validation_codes: np.ndarray,
    candidates: tuple[int, ...],
    seed: int,
) -> tuple[GaussianMixture, dict[int, float]]:
    """Each candidate mixture that the codes can support (2L codes per component, else one
    component), fitted on the training codes; the one the validation codes like best."""
    usable = [k for k in candidates if k * 2 * train_codes.shape[1] <= len(train_codes)] or [1]
    scores: dict[int, float] = {}
    best: GaussianMixture | None = None
    for k in usable:
        log.info("latent density: fitting %d components to %d codes", k, len(train_codes))
        mixture = GaussianMixture(
            k,
            covariance_type="full",
            reg_covar=REG_COVAR,
            max_iter=MAX_EM_ITERATIONS,
            random_state=seed,
        ).fit(train_codes)
        scores[k] = float(mixture.score(validation_codes))
        log.info("latent density: %d components, validation log-likelihood %.3f", k, scores[k])
        if best is None or scores[k] > scores[best.n_components]:
            best = mixture
    assert best is not None
    return best, scores


def _class_gaussians(
    codes: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Each digit's mean [10, L] and covariance factor [10, L, L]; a digit with fewer than
    two codes (only in tiny runs) takes all codes' Gaussian, and is listed."""
    dim = codes.shape[1]
    means, factors, fallback = [], [], []
    for digit in range(DIGITS):
        mine = codes[labels == digit]
        if len(mine) < 2:
            fallback.append(digit)
            mine = codes
        covariance = np.cov(mine, rowvar=False) + REG_COVAR * np.eye(dim)
        means.append(mine.mean(axis=0))
        factors.append(np.linalg.cholesky(covariance))
    return np.stack(means), np.stack(factors), fallback
