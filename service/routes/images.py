"""Routes that take images: reconstruct, encode, score.

No `from __future__ import annotations` here: the parameter types close over `settings`.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import Field
from starlette.responses import Response

from service.deps import ModelCall, model_call, new_seed, rng_for
from service.latent import Array, reparameterize
from service.offload import Cost, ImageInputs, ModelJob, Pass, mean_latent
from service.preprocess import input_rows
from service.problems import problem_responses
from service.query import openapi_parameters
from service.responses import image_response_doc, json_response, png_response
from service.routes.common import (
    ImageQuery,
    ScaleField,
    SeedField,
    image_body_doc,
    image_limits,
    image_options,
)
from service.runtime import ReconstructMode
from service.schemas import (
    EncodeResponse,
    ImageScore,
    ReconstructResponse,
    ScoreResponse,
)
from service.settings import Settings
from service.uploads import read_upload

ERRORS = problem_responses(408, 413, 415, 422, 503)
DEFAULT_SCORE_K = 100


def router(settings: Settings) -> APIRouter:
    """The image routes, with limits from `settings` declared in their OpenAPI."""
    api = APIRouter(prefix="/v1", tags=["images"])
    _add_reconstruct(api, settings)
    _add_encode(api, settings)
    _add_score(api, settings)
    return api


def _add_reconstruct(api: APIRouter, settings: Settings) -> None:
    class ReconstructQuery(ImageQuery):
        mode: Annotated[
            ReconstructMode,
            Field(description="`mean` decodes mu; `sample` decodes z = mu + exp(logvar/2) * eps."),
        ] = "mean"
        seed: SeedField = None
        scale: ScaleField = 1

    body_doc = image_body_doc(settings.max_batch)

    @api.post(
        "/reconstruct",
        responses={
            **image_response_doc(
                ReconstructResponse,
                "A PNG (a grid for a batch), or JSON with `Accept: application/json`.",
            ),
            **ERRORS,
        },
        openapi_extra={**body_doc, "parameters": openapi_parameters(ReconstructQuery)},
    )
    async def reconstruct(
        request: Request,
        call: Annotated[ModelCall[ReconstructQuery], Depends(model_call(ReconstructQuery))],
    ) -> Response:
        """Reconstruct one image (the raw body) or a batch (multipart field `files`).

        JSON carries, per image, the preprocessed `inputs` the model saw, the `z` decoded and
        the reconstruction `probs`, each row-major over `image_shape`.
        """
        services, runtime, output, query = call.services, call.runtime, call.output, call.query
        mode, scale = query.mode, query.scale
        upload = await read_upload(request, image_limits(settings))
        options = image_options(runtime, query.preprocess, query.binarize)
        used_seed = new_seed(query.seed) if mode == "sample" else None

        def sampled(mu: Array, logvar: Array) -> Array:
            assert used_seed is not None
            return reparameterize(mu, logvar, rng_for(used_seed))

        def respond(result: Pass) -> Response:
            assert result.z is not None and result.probs is not None
            if output == "json":
                return json_response(
                    ReconstructResponse(
                        model_version=runtime.version,
                        image_shape=list(options.shape),
                        mode=mode,
                        seed=used_seed,
                        inputs=result.x.tolist(),
                        z=result.z.tolist(),
                        probs=result.probs.tolist(),
                    )
                )
            return png_response(result.probs, options.shape, scale, headers=_seed_header(used_seed))

        # mean_latent (z = mu) lets the job take the fused reconstruct graph when there is one
        inputs = ImageInputs(upload.images, options)
        job = ModelJob(runtime, inputs, mean_latent if mode == "mean" else sampled, respond)
        return await services.executor.run_model("reconstruct", Cost(upload.pixels, 2), job)


def _add_encode(api: APIRouter, settings: Settings) -> None:
    class EncodeQuery(ImageQuery):
        sample: Annotated[bool, Field(description="Also draw z from q(z|x).")] = False
        seed: SeedField = None

    body_doc = image_body_doc(settings.max_batch)

    @api.post(
        "/encode",
        responses={
            200: {"model": EncodeResponse, "description": "mu and logvar per image."},
            **ERRORS,
        },
        openapi_extra={**body_doc, "parameters": openapi_parameters(EncodeQuery)},
    )
    async def encode(
        request: Request,
        call: Annotated[ModelCall[EncodeQuery], Depends(model_call(EncodeQuery))],
    ) -> Response:
        """Encode one image or a batch to the posterior's mu and logvar (and z if asked)."""
        services, runtime, query = call.services, call.runtime, call.query
        upload = await read_upload(request, image_limits(settings))
        options = image_options(runtime, query.preprocess, query.binarize)
        used_seed = new_seed(query.seed) if query.sample else None

        def respond(result: Pass) -> Response:
            z = None
            if used_seed is not None:
                z = reparameterize(result.mu, result.logvar, rng_for(used_seed)).tolist()
            return json_response(
                EncodeResponse(
                    model_version=runtime.version,
                    latent_dim=runtime.manifest.latent_dim,
                    mu=result.mu.tolist(),
                    logvar=result.logvar.tolist(),
                    z=z,
                    seed=used_seed,
                )
            )

        inputs = ImageInputs(upload.images, options)
        job = ModelJob(runtime, inputs, None, respond)
        return await services.executor.run_model("encode", Cost(upload.pixels, 1), job)


def _add_score(api: APIRouter, settings: Settings) -> None:
    class ScoreQuery(ImageQuery):
        k: Annotated[
            int, Field(ge=1, le=settings.max_score_k, description="Importance samples per image.")
        ] = min(DEFAULT_SCORE_K, settings.max_score_k)
        seed: SeedField = None

    body_doc = image_body_doc(settings.max_batch)

    @api.post(
        "/score",
        responses={
            200: {"model": ScoreResponse, "description": "Scores per image, in nats."},
            **ERRORS,
        },
        openapi_extra={**body_doc, "parameters": openapi_parameters(ScoreQuery)},
    )
    async def score(
        request: Request,
        call: Annotated[ModelCall[ScoreQuery], Depends(model_call(ScoreQuery))],
    ) -> Response:
        """Anomaly score per image: the k-sample IWAE estimate of -log p(x), and -ELBO.

        Higher means less like the training data. Figures are nats per image.
        """
        services, runtime, query, k = call.services, call.runtime, call.query, call.query.k
        upload = await read_upload(request, image_limits(settings))
        options = image_options(runtime, query.preprocess, query.binarize)
        used_seed = new_seed(query.seed)

        def job() -> Response:
            x = input_rows(upload.images(), options)
            s = runtime.score(x, k, rng_for(used_seed))
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
                ScoreResponse(model_version=runtime.version, k=k, seed=used_seed, scores=scores)
            )

        return await services.executor.run("score", Cost(upload.pixels, 1 + k), job)


def _seed_header(seed: int | None) -> dict[str, str] | None:
    return None if seed is None else {"X-Seed": str(seed)}
