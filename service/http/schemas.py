"""Request and response bodies (JSON). Images are flattened row-major from `image_shape`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.model.latent import MAX_ABS_Z, InterpolationMethod
from service.model.repository import VersionStatus
from service.model.runtime import Prior, Source

ReconstructMode = Literal["mean", "sample"]  # decode mu, or a draw from q(z|x)
# Strict: a JSON number (integer or not), as the schema says; lax mode would also take true,
# false and numeric strings such as "1.5" (found by schemathesis, tests/reliability).
LatentValue = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_ABS_Z, le=MAX_ABS_Z)]
Rows = list[list[float]]
_EXAMPLE_ROW = [0.0, 0.5, 1.0]  # illustrative: real rows have 784 pixels or latent_dim values


def _example(**fields: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [fields]})


class DecodeRequest(BaseModel):
    """Latent vectors to decode."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"z": [[0.0] * 8]}]})
    z: list[list[LatentValue]] = Field(
        min_length=1,
        description="1..max_batch vectors, each of the served model's latent_dim finite floats "
        f"with |z| <= {MAX_ABS_Z:g} (GET /v1/models tells latent_dim).",
    )


class InterpolateRequest(BaseModel):
    """The two latent end points of an interpolation."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"z": [[-1.0] * 8, [1.0] * 8]}]}
    )
    z: list[list[LatentValue]] = Field(
        min_length=2, max_length=2, description="Exactly two vectors of latent_dim floats."
    )


class ImagesResponse(BaseModel):
    """Decoded pixel probabilities, one row of prod(image_shape) values per image."""

    model_config = _example(model_version=1, image_shape=[28, 28], probs=[_EXAMPLE_ROW])
    model_version: int
    image_shape: list[int]
    probs: Rows = Field(description="Bernoulli probabilities in [0, 1], [batch, pixels].")


class ReconstructResponse(ImagesResponse):
    """Reconstructions, with the preprocessed input the model saw and the z decoded."""

    model_config = _example(
        model_version=1,
        image_shape=[28, 28],
        mode="mean",
        seed=None,
        inputs=[_EXAMPLE_ROW],
        z=[_EXAMPLE_ROW],
        probs=[_EXAMPLE_ROW],
    )
    mode: ReconstructMode
    seed: int | None = Field(description="The seed of mode=sample (drawn when not given).")
    inputs: Rows = Field(description="The model input after preprocessing, [batch, pixels].")
    z: Rows = Field(description="The latent code decoded: mu, or a draw from q(z|x).")


class EncodeResponse(BaseModel):
    """The approximate posterior q(z|x) = N(mu, exp(logvar)) of each image."""

    model_config = _example(
        model_version=1, latent_dim=3, mu=[_EXAMPLE_ROW], logvar=[_EXAMPLE_ROW], z=None, seed=None
    )
    model_version: int
    latent_dim: int
    mu: Rows
    logvar: Rows
    z: Rows | None = Field(description="A draw z = mu + exp(logvar/2) * eps, when sample=true.")
    seed: int | None = Field(description="The seed of that draw (drawn when not given).")


class SampleResponse(ImagesResponse):
    """Draws from the prior or the fitted density, decoded."""

    model_config = _example(
        model_version=1,
        image_shape=[28, 28],
        seed=7,
        temperature=1.0,
        prior="fitted",
        digit=3,
        z=[_EXAMPLE_ROW],
        probs=[_EXAMPLE_ROW],
    )
    seed: int
    temperature: float
    prior: Prior = Field(description="`standard` (N(0, I)) or `fitted` (the fitted density).")
    digit: int | None = Field(description="The digit asked for, or null.")
    z: Rows


class InterpolateResponse(ImagesResponse):
    """The decoded path between two latent codes, end points included."""

    model_config = _example(
        model_version=1,
        image_shape=[28, 28],
        method="linear",
        z=[_EXAMPLE_ROW],
        probs=[_EXAMPLE_ROW],
    )
    method: InterpolationMethod
    z: Rows


class ImageScore(BaseModel):
    """Figures for one image, in nats (lower is more typical of the training data)."""

    anomaly_score: float = Field(
        description="iwae_nll / (1 + ink), ink being the sum of the input's pixel values in "
        "[0, 1]: nats per unit of ink, higher for inputs unlike the training digits."
    )
    iwae_nll: float = Field(description="-log p(x) estimated with k importance samples.")
    neg_elbo: float = Field(description="reconstruction + kl, an upper bound on -log p(x).")
    reconstruction: float = Field(description="-E_q[log p(x|z)] over the k samples.")
    kl: float = Field(description="KL(q(z|x) || p(z)), analytic.")


class ScoreResponse(BaseModel):
    """Per-image anomaly scores."""

    model_config = _example(
        model_version=1,
        k=100,
        seed=7,
        unit="nats",
        scores=[
            {
                "anomaly_score": 0.61,
                "iwae_nll": 95.1,
                "neg_elbo": 99.8,
                "reconstruction": 74.2,
                "kl": 25.6,
            }
        ],
    )
    model_version: int
    k: int
    seed: int
    unit: Literal["nats"] = "nats"
    scores: list[ImageScore]


class VersionInfo(BaseModel):
    version: int
    source: Source
    status: VersionStatus = Field(
        description="`serving`; `available`: validated by this process, not served now; "
        "`unvalidated`: complete but never examined (a newer version was served first), so it "
        "may still be rejected; `rejected` (see `reason`); `incomplete`: no manifest.json yet."
    )
    reason: str | None = None


class ServingModel(BaseModel):
    version: int
    source: Source
    manifest: dict[str, Any] = Field(description="manifest.json as published.")


class ModelsResponse(BaseModel):
    """What is served, every version seen, and why any were rejected."""

    model_config = _example(
        ready=True,
        served_by="api-1/7",
        detail="serving version 2 from the model repository",
        serving={"version": 2, "source": "repository", "manifest": {"version": 2}},
        versions=[
            {
                "version": 3,
                "source": "repository",
                "status": "rejected",
                "reason": "decoder.onnx: sha256 is 3f..., manifest says 9a...",
            },
            {"version": 2, "source": "repository", "status": "serving", "reason": None},
        ],
    )
    ready: bool
    served_by: str = Field(description="The replica and process that answered: host/pid.")
    detail: str
    serving: ServingModel | None
    versions: list[VersionInfo]


class Health(BaseModel):
    model_config = _example(status="ok")
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    model_config = _example(status="ready", model_version="2", detail="serving version 2")
    status: Literal["ready"] = "ready"
    model_version: str
    detail: str
