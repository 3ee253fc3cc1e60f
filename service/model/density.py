"""A version's fitted latent density (`density.npz`): where the encoder puts the data.

The standard normal prior has "holes": regions it favours where the encoder put no
training image, which decode to shapes that are no digit. Ex-post density estimation
(Ghosh et al. 2020, "From variational to deterministic autoencoders") fits a density to the
posterior means of the training images after training, and samples from it instead. The
training job (training.density) fits two sets of full-covariance Gaussians:

- `mixture_*`: a Gaussian mixture over all training codes, for unconditional samples;
- `class_*`: one Gaussian per digit class 0-9, for samples of a chosen digit.

Each Gaussian is its mean and the lower Cholesky factor T of its covariance, so that a draw
is mean + temperature * T @ eps with eps ~ N(0, I): numpy only, no fit at serving time.
The file is an `.npz` of float arrays (never pickles) and is checked like the graphs: its
sha256, the arrays' names and shapes, finite values, weights that sum to 1, and factors that
are lower triangular with a positive diagonal (so each covariance T T' is positive definite).
Shapes: K components, L latent dimensions, n draws.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.model.latent import MAX_ABS_Z, MAX_TEMPERATURE, Array

DIGITS = 10
MAX_COMPONENTS = 256
MAX_DENSITY_BYTES = 2**26  # the default model's file is under 1 MB
MAX_UNPACKED_BYTES = 2**27  # what its arrays may take once inflated (a zip bomb stops here)
MAX_FACTOR = MAX_ABS_Z / MAX_TEMPERATURE  # |entries| of a Cholesky factor
WEIGHT_TOLERANCE = 1e-4  # |sum of the mixture weights - 1| accepted
ARRAYS = ("mixture_weights", "mixture_means", "mixture_cholesky", "class_means", "class_cholesky")


class DensityError(ValueError):
    """The density file is unreadable or breaks the contract; the message says how."""


@dataclass(frozen=True)
class Gaussians:
    """K full-covariance Gaussians with their weights."""

    weights: npt.NDArray[np.float64]  # [K], positive, summing to 1 (in float64, as choice needs)
    means: Array  # [K, L]
    cholesky: Array  # [K, L, L], lower triangular with a positive diagonal

    def draw(
        self, n: int, temperature: float, rng: np.random.Generator, component: int | None = None
    ) -> Array:
        """n draws [n, L]: from the mixture, or from one component; the deviation from each
        component's mean is scaled by `temperature`."""
        if component is None:
            chosen = rng.choice(len(self.weights), size=n, p=self.weights)
        else:
            chosen = np.full(n, component)
        eps = rng.standard_normal((n, self.means.shape[1]), dtype=np.float32)
        spread = np.einsum("nij,nj->ni", self.cholesky[chosen], eps)
        z: Array = (self.means[chosen] + np.float32(temperature) * spread).astype(np.float32)
        return z


@dataclass(frozen=True)
class LatentDensity:
    """The mixture for unconditional samples, and one Gaussian per digit."""

    mixture: Gaussians
    classes: Gaussians  # component d is digit d (equal weights: a digit is always chosen)

    @property
    def components(self) -> int:
        return len(self.mixture.weights)

    def sample(
        self, n: int, temperature: float, rng: np.random.Generator, digit: int | None = None
    ) -> Array:
        """n draws [n, L]: from the mixture, or from digit `digit`'s Gaussian."""
        if digit is None:
            return self.mixture.draw(n, temperature, rng)
        return self.classes.draw(n, temperature, rng, component=digit)


def parse_density(data: bytes, latent_dim: int) -> LatentDensity:
    """The density in `data` (the file's bytes, checksum already checked), validated."""
    arrays = _arrays(data)
    mixture = _gaussians(arrays, "mixture", latent_dim, None)
    classes = _gaussians(arrays, "class", latent_dim, DIGITS)
    return LatentDensity(mixture=mixture, classes=classes)


def _arrays(data: bytes) -> dict[str, Array]:
    """The named float arrays of an .npz, bounded before anything is inflated."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > MAX_UNPACKED_BYTES:
            raise DensityError(
                f"its arrays take {unpacked} bytes unpacked; the limit is {MAX_UNPACKED_BYTES}"
            )
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            missing = [name for name in ARRAYS if name not in npz.files]
            if missing:
                raise DensityError(f"arrays {missing} are missing; it must hold {list(ARRAYS)}")
            loaded = {name: npz[name] for name in ARRAYS}
    except DensityError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DensityError(f"not a readable .npz of numeric arrays: {exc}") from exc
    for name, value in loaded.items():
        if value.dtype.kind != "f":
            raise DensityError(f"{name} must hold floats, got dtype {value.dtype}")
        if not np.isfinite(value).all():
            raise DensityError(f"{name} holds NaN or infinity")
    return {name: value.astype(np.float32) for name, value in loaded.items()}


def _gaussians(
    arrays: dict[str, Array], prefix: str, latent_dim: int, count: int | None
) -> Gaussians:
    """`prefix`_means and _cholesky (and _weights, or the classes' equal weights)."""
    means, cholesky = arrays[f"{prefix}_means"], arrays[f"{prefix}_cholesky"]
    k = len(means) if means.ndim == 2 else -1
    if k < 1 or k > MAX_COMPONENTS or (count is not None and k != count):
        wanted = count if count is not None else f"1..{MAX_COMPONENTS}"
        raise DensityError(f"{prefix}_means must be [{wanted}, {latent_dim}], got {means.shape}")
    if means.shape != (k, latent_dim) or cholesky.shape != (k, latent_dim, latent_dim):
        raise DensityError(
            f"{prefix}_means and {prefix}_cholesky must be [{k}, {latent_dim}] and "
            f"[{k}, {latent_dim}, {latent_dim}], got {means.shape} and {cholesky.shape}"
        )
    if np.abs(means).max() > MAX_ABS_Z:
        raise DensityError(f"{prefix}_means leave the latent box |z_i| <= {MAX_ABS_Z:g}")
    if np.abs(cholesky).max() > MAX_FACTOR:
        raise DensityError(
            f"{prefix}_cholesky holds entries beyond +-{MAX_FACTOR:g}: its draws at "
            f"temperature {MAX_TEMPERATURE:g} would leave the latent box"
        )
    if np.triu(cholesky, 1).any():
        raise DensityError(f"{prefix}_cholesky must be lower triangular")
    if not (np.diagonal(cholesky, axis1=1, axis2=2) > 0).all():
        raise DensityError(
            f"{prefix}_cholesky must have a positive diagonal (a positive-definite covariance)"
        )
    weights = arrays["mixture_weights"] if count is None else np.full(k, 1 / k, np.float32)
    if weights.shape != (k,) or (weights <= 0).any():
        raise DensityError(f"{prefix}_weights must be {k} positive numbers, got {weights.shape}")
    if abs(float(weights.sum(dtype=np.float64)) - 1) > WEIGHT_TOLERANCE:
        raise DensityError(f"{prefix}_weights must sum to 1, got {float(weights.sum()):.6g}")
    exact = weights.astype(np.float64)
    return Gaussians(weights=exact / exact.sum(), means=means, cholesky=cholesky)
