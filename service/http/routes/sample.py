"""GET /v1/sample: draws from N(0, I) or from the version's fitted latent density, decoded.

No `from __future__ import annotations` here: the query models close over `settings`.
"""

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import Field
from starlette.responses import Response

from service.http.deps import ModelCall, model_call, new_seed, rng_for
from service.http.problems import invalid
from service.http.query import QueryModel
from service.http.responses import json_response, png_response
from service.http.routes.common import ScaleField, SeedField, model_route
from service.http.schemas import SampleResponse
from service.inference.executor import Work
from service.model.density import DIGITS
from service.model.latent import MAX_TEMPERATURE
from service.model.runtime import ModelRuntime, Prior
from service.settings import Settings

DEFAULT_N = 16
PRIOR_HEADER = "X-Sample-Prior"


class SampleQuery(QueryModel):
    n: int = DEFAULT_N  # bounded by the settings: `sample_query`
    seed: SeedField = None
    temperature: Annotated[
        float,
        Field(
            ge=0.0,
            le=MAX_TEMPERATURE,
            allow_inf_nan=False,
            description="Scales each draw's deviation from its mean: z ~ N(0, temperature^2 I) "
            "under the standard prior; mean + temperature * (a draw from the component) under "
            "the fitted one.",
        ),
    ] = 1.0
    prior: Annotated[
        Prior | None,
        Field(
            description="`standard`: N(0, I), as the VAE was trained. `fitted`: the Gaussian "
            "mixture fitted to the training images' codes, where the digits are. Default: "
            "`fitted` when the served version has one, else `standard`."
        ),
    ] = None
    digit: Annotated[
        int | None,
        Field(
            ge=0,
            le=DIGITS - 1,
            description="Sample this digit, from its class's fitted Gaussian (needs the "
            "fitted density).",
        ),
    ] = None
    scale: ScaleField = 1


def sample_query(settings: Settings) -> type[SampleQuery]:
    """The sample query, its n bounded by VAE_MAX_SAMPLE_N."""

    class BoundedSampleQuery(SampleQuery):
        n: Annotated[
            int,
            Field(ge=1, le=settings.max_sample_n, description="How many samples.", examples=[16]),
        ] = min(DEFAULT_N, settings.max_sample_n)

    return BoundedSampleQuery


def add_sample(api: APIRouter, settings: Settings) -> None:
    query_model = sample_query(settings)

    @model_route(
        api,
        "GET",
        "/sample",
        query=query_model,
        result=SampleResponse,
        description="A PNG grid, or JSON with "
        "`Accept: application/json`. The same seed gives the same bytes.",
        png=True,
        errors=(422, 503),
    )
    async def sample(request: Request) -> Response:
        """Decode n draws from the prior or the fitted density, or of one digit: a PNG grid,
        or JSON with z and probabilities. `X-Sample-Prior` says which prior was used."""
        call = model_call(request, query_model)
        prior = chosen_prior(call.runtime, call.query)
        compute = partial(_sampled, call, prior, new_seed(call.query.seed))
        return await call.services.executor.run("sample", Work(0, call.query.n), compute)


def chosen_prior(runtime: ModelRuntime, query: SampleQuery) -> Prior:
    """The prior a sample query asks for, or the version's default; a 422 when the served
    version cannot give it."""
    if query.digit is not None and query.prior == "standard":
        raise invalid(
            "query.digit",
            "digit= draws from that digit's fitted Gaussian: leave prior out or set prior=fitted",
            code="digit_needs_fitted_prior",
        )
    prior = query.prior or ("fitted" if query.digit is not None else runtime.default_prior)
    if prior == "fitted" and runtime.density is None:
        raise invalid(
            "query.digit" if query.digit is not None else "query.prior",
            f"model version {runtime.version} has no fitted latent density (no density file "
            "in its manifest), so it samples only prior=standard, without digit=",
            code="no_fitted_density",
        )
    return prior


def _sampled(call: ModelCall[SampleQuery], prior: Prior, seed: int) -> Response:
    """A sample's answer: n draws, decoded, as a PNG grid or JSON."""
    runtime, query = call.runtime, call.query
    shape = runtime.manifest.image_shape
    z, probs = runtime.sample(query.n, query.temperature, rng_for(seed), prior, query.digit)
    headers = {"X-Seed": str(seed), PRIOR_HEADER: prior}
    if call.output == "png":
        return png_response(probs, shape, query.scale, headers=headers)
    return json_response(
        SampleResponse(
            model_version=runtime.version,
            image_shape=list(shape),
            seed=seed,
            temperature=query.temperature,
            prior=prior,
            digit=query.digit,
            z=z.tolist(),
            probs=probs.tolist(),
        ),
        headers=headers,
    )
