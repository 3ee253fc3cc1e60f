"""GET /v1/sample's priors: standard N(0, I) as before, the fitted latent density, digit=;
and the density file checked like the graphs (a bad one makes its version invalid)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.model.density import ARRAYS, parse_density
from service.settings import Settings
from tests.service.service_helpers import (
    install,
    npz_bytes,
    reject_v2,
    set_field,
    write_density,
)

JSON = {"Accept": "application/json"}


@pytest.fixture
def fitted(
    repo: Path, published: dict[str, Path], make_settings: Callable[..., Settings]
) -> Iterator[TestClient]:
    """The real app serving model a with its fitted density as version 1."""
    install(repo, published["fitted"], 1)
    with TestClient(create_app(make_settings())) as test_client:
        yield test_client


def density_arrays(published: dict[str, Path]) -> dict[str, np.ndarray]:
    with np.load(published["fitted"] / "density.npz") as npz:
        return {name: npz[name] for name in npz.files}


def sample(client: TestClient, **params: Any) -> Any:
    response = client.get("/v1/sample", params=params, headers=JSON)
    assert response.status_code == 200, response.text
    return response


def test_standard_prior_keeps_its_bytes_for_a_seed(
    client: TestClient, published: dict[str, Path], repo: Path, make_settings: Any
) -> None:
    """Model a without a density samples N(0, I) by default; the same weights with a density
    give the very same bytes for prior=standard, and z is the seed's standard normal draws."""
    before = client.get("/v1/sample", params={"seed": 5, "n": 4})
    plain = sample(client, seed=5, n=4, temperature=0.5).json()
    assert before.headers["x-sample-prior"] == "standard" and plain["prior"] == "standard"
    expected = np.random.default_rng(5).standard_normal((4, 8), dtype=np.float32) * 0.5
    np.testing.assert_allclose(plain["z"], expected, rtol=1e-6)

    install(repo, published["fitted"], 2)
    with TestClient(create_app(make_settings())) as fitted_client:
        after = fitted_client.get("/v1/sample", params={"seed": 5, "n": 4, "prior": "standard"})
        assert after.headers["x-model-version"] == "2"
        assert after.content == before.content
        assert after.headers["x-sample-prior"] == "standard"


def test_the_fitted_density_is_the_default_and_draws_from_its_components(
    fitted: TestClient, published: dict[str, Path]
) -> None:
    arrays = density_arrays(published)
    body = sample(fitted, seed=3, n=32, temperature=0).json()
    assert body["prior"] == "fitted" and body["digit"] is None
    means = arrays["mixture_means"]
    # At temperature 0 every draw is the mean of the component it chose.
    for z in np.asarray(body["z"]):
        assert np.abs(means - z).max(axis=1).min() < 1e-5
    spread = np.asarray(sample(fitted, seed=3, n=32).json()["z"])
    assert np.abs(spread - np.asarray(body["z"])).max() > 1e-3  # temperature 1 spreads them
    png = fitted.get("/v1/sample", params={"seed": 3})
    assert png.headers["content-type"] == "image/png"
    assert png.headers["x-sample-prior"] == "fitted"


def test_digit_draws_from_that_digits_gaussian(
    fitted: TestClient, published: dict[str, Path]
) -> None:
    class_means = density_arrays(published)["class_means"]
    for digit in (0, 7, 9):
        body = sample(fitted, seed=1, n=3, digit=digit, temperature=0).json()
        assert body["digit"] == digit and body["prior"] == "fitted"
        np.testing.assert_allclose(body["z"], np.repeat(class_means[[digit]], 3, 0), atol=1e-6)
    explicit = sample(fitted, seed=1, n=3, digit=4, prior="fitted")
    assert explicit.content == sample(fitted, seed=1, n=3, digit=4).content


def test_the_same_seed_gives_the_same_bytes_under_the_fitted_prior(fitted: TestClient) -> None:
    for params in ({"seed": 11}, {"seed": 11, "digit": 2}, {"seed": 11, "temperature": 0.7}):
        first = fitted.get("/v1/sample", params=params)
        assert first.status_code == 200
        assert fitted.get("/v1/sample", params=params).content == first.content
    other = fitted.get("/v1/sample", params={"seed": 12})
    assert other.content != fitted.get("/v1/sample", params={"seed": 11}).content


@pytest.mark.parametrize(
    ("params", "field", "code"),
    [
        ({"digit": 3}, "query.digit", "no_fitted_density"),
        ({"prior": "fitted"}, "query.prior", "no_fitted_density"),
        ({"prior": "fitted", "digit": 0}, "query.digit", "no_fitted_density"),
    ],
)
def test_a_version_without_a_density_refuses_fitted_samples(
    client: TestClient, params: dict[str, Any], field: str, code: str
) -> None:
    response = client.get("/v1/sample", params=params)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["field"] == field and problem["errors"][0]["type"] == code
    assert "version 1 has no fitted latent density" in problem["detail"]
    assert "prior=standard" in problem["detail"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"digit": 10}, "query.digit"),
        ({"digit": -1}, "query.digit"),
        ({"digit": "seven"}, "query.digit"),
        ({"prior": "uniform"}, "query.prior"),
        ({"digit": 3, "prior": "standard"}, "query.digit"),
    ],
)
def test_bad_prior_or_digit_is_a_422_naming_it(
    fitted: TestClient, params: dict[str, Any], field: str
) -> None:
    response = fitted.get("/v1/sample", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field


def changed(name: str, change: Callable[[np.ndarray], Any]) -> Callable[..., Any]:
    """A density whose array `name` is replaced by change(its value)."""

    def arrays(good: dict[str, np.ndarray]) -> dict[str, Any]:
        return {**good, name: change(good[name].copy())}

    return arrays


def _negative_diagonal(factors: np.ndarray) -> np.ndarray:
    factors[0, 1, 1] = -factors[0, 1, 1]
    return factors


def _upper(factors: np.ndarray) -> np.ndarray:
    factors[0, 0, 3] = 0.5
    return factors


def _nan(means: np.ndarray) -> np.ndarray:
    means[0, 0] = np.nan
    return means


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (changed("mixture_cholesky", _negative_diagonal), "positive diagonal"),
        (changed("class_cholesky", _upper), "lower triangular"),
        (changed("mixture_means", _nan), "NaN or infinity"),
        (changed("mixture_weights", lambda w: w * 2), "sum to 1"),
        (changed("class_means", lambda m: m[:9]), "class_means must be [10, 8]"),
        (changed("mixture_means", lambda m: m[:, :4]), "mixture_means and mixture_cholesky"),
        (changed("mixture_cholesky", lambda c: c * 1e6), "entries beyond"),
        (changed("class_means", lambda m: m.astype(np.int64)), "must hold floats"),
        (changed("mixture_weights", lambda w: w.astype(object)), "not a readable .npz"),
        (lambda good: {k: v for k, v in good.items() if k != "class_cholesky"}, "missing"),
    ],
)
def test_a_bad_density_makes_its_version_invalid(
    repo: Path, published: dict[str, Path], make: Callable[..., Any], reason: str
) -> None:
    good = density_arrays(published)
    assert sorted(good) == sorted(ARRAYS)

    def edit(version_dir: Path, manifest: dict[str, Any]) -> None:
        write_density(version_dir, manifest, npz_bytes(make(good)))

    _, _, rejection = reject_v2(repo, published, edit)
    assert rejection.reason.startswith("density.npz: ")
    assert reason in rejection.reason


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (set_field("density", {"file": "density.npz", "sha256": "0" * 64}), "sha256 is"),
        (set_field("density", {"file": "../density.npz", "sha256": "0" * 64}), "plain file"),
        (set_field("density", "density.npz"), "must be an object"),
    ],
)
def test_a_density_entry_is_checked_like_a_graphs(
    repo: Path, published: dict[str, Path], edit: Callable[..., Any], reason: str
) -> None:
    def with_file(version_dir: Path, manifest: dict[str, Any]) -> None:
        (version_dir / "density.npz").write_bytes(
            (published["fitted"] / "density.npz").read_bytes()
        )
        edit(version_dir, manifest)

    _, _, rejection = reject_v2(repo, published, with_file)
    assert reason in rejection.reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not a zip at all", "not a readable .npz"),
        (
            npz_bytes({"mixture_weights": np.zeros(2**25 + 1, np.float32)}, compressed=True),
            "unpacked",
        ),
    ],
    ids=["not-a-zip", "zip-bomb"],
)
def test_not_a_zip_and_a_zip_bomb_are_refused(
    repo: Path, published: dict[str, Path], payload: bytes, reason: str
) -> None:
    def edit(version_dir: Path, manifest: dict[str, Any]) -> None:
        write_density(version_dir, manifest, payload)

    _, _, rejection = reject_v2(repo, published, edit)
    assert reason in rejection.reason, rejection.reason


def test_many_float32_weights_sample_and_keep_their_bytes(published: dict[str, Path]) -> None:
    """float32 weights of 97 components sum to 1 only within float32's rounding: the draws
    must still work (numpy's choice wants float64 sums within 1e-8), seed for seed."""
    good = density_arrays(published)
    rng = np.random.default_rng(7)  # weights whose float32 sum is 8e-8 off 1 in float64
    k, dim = 97, good["mixture_means"].shape[1]
    weights = rng.dirichlet(np.ones(k)).astype(np.float32)
    arrays = {
        **good,
        "mixture_weights": weights / weights.sum(),
        "mixture_means": rng.normal(size=(k, dim)).astype(np.float32),
        "mixture_cholesky": np.repeat(np.eye(dim, dtype=np.float32)[None], k, 0),
    }
    density = parse_density(npz_bytes(arrays), dim)
    first = density.sample(500, 1.0, np.random.default_rng(3))
    assert first.shape == (500, dim)
    np.testing.assert_array_equal(first, density.sample(500, 1.0, np.random.default_rng(3)))
