"""Routes that take images: reconstruct, encode, score.

No `from __future__ import annotations` here: the query models close over `settings`.
"""

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import Field
from starlette.responses import Response

from service.http.deps import ModelCall, model_call, new_seed, rng_for
from service.http.responses import json_response, png_response
from service.http.routes.common import (
    ImageQuery,
    ScaleField,
    SeedField,
    image_body_doc,
    image_limits,
    image_options,
    model_route,
)
from service.http.schemas import (
    EncodeResponse,
    ImageScore,
    ReconstructMode,
    ReconstructResponse,
    ScoreResponse,
)
from service.http.uploads import Upload, read_upload
from service.images.preprocess import ImageOptions, input_rows
from service.inference.executor import Work
from service.inference.jobs import Draw, Job, Latent, Result
from service.model.runtime import ModelRuntime
from service.settings import Settings

DEFAULT_SCORE_K = 100


def router(settings: Settings) -> APIRouter:
    """The image routes, with limits from `settings` declared in their OpenAPI."""
    api = APIRouter(prefix="/v1", tags=["images"])
    _add_reconstruct(api, settings)
    _add_encode(api, settings)
    _add_score(api, settings)
    return api


class ReconstructQuery(ImageQuery):
    mode: Annotated[
        ReconstructMode,
        Field(description="`mean` decodes mu; `sample` decodes z = mu + exp(logvar/2) * eps."),
    ] = "mean"
    seed: SeedField = None
    scale: ScaleField = 1


class EncodeQuery(ImageQuery):
    sample: Annotated[bool, Field(description="Also draw z from q(z|x).")] = False
    seed: SeedField = None


class ScoreQuery(ImageQuery):
    k: int = DEFAULT_SCORE_K  # bounded by the settings: `score_query`
    seed: SeedField = None


def score_query(settings: Settings) -> type[ScoreQuery]:
    """The score query, its k bounded by VAE_MAX_SCORE_K."""

    class BoundedScoreQuery(ScoreQuery):
        k: Annotated[
            int, Field(ge=1, le=settings.max_score_k, description="Importance samples per image.")
        ] = min(DEFAULT_SCORE_K, settings.max_score_k)

    return BoundedScoreQuery


def _add_reconstruct(api: APIRouter, settings: Settings) -> None:
    @model_route(
        api,
        "POST",
        "/reconstruct",
        query=ReconstructQuery,
        result=ReconstructResponse,
        description="A PNG (a grid for a batch), or JSON with `Accept: application/json`.",
        png=True,
        body=image_body_doc(settings.max_batch),
    )
    async def reconstruct(request: Request) -> Response:
        """Reconstruct one image (the raw body) or a batch (multipart field `files`).

        JSON carries, per image, the preprocessed `inputs` the model saw, the `z` decoded and
        the reconstruction `probs`, each row-major over `image_shape`.
        """
        call = model_call(request, ReconstructQuery)
        runtime, query = call.runtime, call.query
        upload = await read_upload(request, image_limits(settings))
        options = image_options(runtime, query.preprocess, query.binarize)
        seed = new_seed(query.seed) if query.mode == "sample" else None
        z: Latent = "mean" if seed is None else Draw(seed)
        finish = partial(_reconstructed, call, options, seed)
        job = Job(runtime, upload, options, z=z, decode=True, finish=finish)
        return await call.services.executor.run_job("reconstruct", job)


def _add_encode(api: APIRouter, settings: Settings) -> None:
    @model_route(
        api,
        "POST",
        "/encode",
        query=EncodeQuery,
        result=EncodeResponse,
        description="mu and logvar per image.",
        body=image_body_doc(settings.max_batch),
    )
    async def encode(request: Request) -> Response:
        """Encode one image or a batch to the posterior's mu and logvar (and z if asked)."""
        call = model_call(request, EncodeQuery)
        runtime, query = call.runtime, call.query
        upload = await read_upload(request, image_limits(settings))
        options = image_options(runtime, query.preprocess, query.binarize)
        seed = new_seed(query.seed) if query.sample else None
        z: Latent = None if seed is None else Draw(seed)
        finish = partial(_encoded, runtime, seed)
        job = Job(runtime, upload, options, z=z, decode=False, finish=finish)
        return await call.services.executor.run_job("encode", job)


def _add_score(api: APIRouter, settings: Settings) -> None:
    query_model = score_query(settings)

    @model_route(
        api,
        "POST",
        "/score",
        query=query_model,
        result=ScoreResponse,
        description="Scores per image, in nats.",
        body=image_body_doc(settings.max_batch),
    )
    async def score(request: Request) -> Response:
        """Anomaly score per image: the k-sample IWAE estimate of -log p(x), and -ELBO.

        Higher means less like the training data. Figures are nats per image.
        """
        call = model_call(request, query_model)
        runtime, query = call.runtime, call.query
        upload = await read_upload(request, image_limits(settings))
        options = image_options(runtime, query.preprocess, query.binarize)
        compute = partial(_scored, runtime, upload, options, query.k, new_seed(query.seed))
        rows = None if upload.count is None else upload.count * (1 + query.k)
        return await call.services.executor.run("score", Work(upload.pixels, rows), compute)


def _reconstructed(
    call: ModelCall[ReconstructQuery], options: ImageOptions, seed: int | None, result: Result
) -> Response:
    """A reconstruct's answer: a PNG, or JSON with the inputs, z and probs."""
    assert result.z is not None and result.probs is not None
    if call.output == "png":
        headers = None if seed is None else {"X-Seed": str(seed)}
        return png_response(result.probs, options.shape, call.query.scale, headers=headers)
    return json_response(
        ReconstructResponse(
            model_version=call.runtime.version,
            image_shape=list(options.shape),
            mode=call.query.mode,
            seed=seed,
            inputs=result.x.tolist(),
            z=result.z.tolist(),
            probs=result.probs.tolist(),
        )
    )


def _encoded(runtime: ModelRuntime, seed: int | None, result: Result) -> Response:
    """An encode's answer: mu and logvar (and z, when one was drawn) as JSON."""
    return json_response(
        EncodeResponse(
            model_version=runtime.version,
            latent_dim=runtime.manifest.latent_dim,
            mu=result.mu.tolist(),
            logvar=result.logvar.tolist(),
            z=None if result.z is None else result.z.tolist(),
            seed=seed,
        )
    )


def _scored(
    runtime: ModelRuntime, upload: Upload, options: ImageOptions, k: int, seed: int
) -> Response:
    """A score's answer: the figures of every image (blocking work: reads the images)."""
    x = input_rows(upload.images(), options)
    s = runtime.score(x, k, rng_for(seed))
    scores = [
        ImageScore(
            anomaly_score=s.anomaly[i],
            iwae_nll=s.iwae_nll[i],
            neg_elbo=s.neg_elbo[i],
            reconstruction=s.reconstruction[i],
            kl=s.kl[i],
        )
        for i in range(len(x))
    ]
    return json_response(
        ScoreResponse(model_version=runtime.version, k=k, seed=seed, scores=scores)
    )
