"""Typed dependencies: what a handler may ask for, and the process-wide services behind them."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Generic

import numpy as np
from fastapi import Depends, Request

from service.deadlines import BodyDeadlines
from service.metrics import Metrics
from service.offload import Executor
from service.problems import ApiProblem
from service.query import Q, read_query
from service.responses import OutputFormat, negotiate
from service.runtime import ModelRuntime
from service.settings import Settings
from service.watcher import ModelHolder, Snapshot

SNAPSHOT_SCOPE_KEY = "vae.snapshot"  # set by the middleware: the snapshot a request sees
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Services:
    """Everything the app shares between requests; built by create_app, filled by lifespan."""

    settings: Settings
    holder: ModelHolder
    metrics: Metrics
    executor: Executor
    deadlines: BodyDeadlines


@dataclass(frozen=True)
class ModelCall(Generic[Q]):
    """What a model route needs, solved as one dependency: the services, the served model,
    the response format from Accept, and the route's query parameters."""

    services: Services
    runtime: ModelRuntime
    output: OutputFormat
    query: Q


# The dependencies are `async def` although none awaits, and none depends on another: FastAPI
# runs a plain `def` dependency in the threadpool, and solves each dependency and each
# declared parameter separately on every request (~10 us apiece here); those hops and solves
# cost more than the model itself (docs/benchmarks.md). So a model route takes one
# `model_call` dependency that reads everything it needs, its query included.


def services_of(request: Request) -> Services:
    services = request.app.state.services
    assert isinstance(services, Services)
    return services


def snapshot_of(request: Request) -> Snapshot:
    """The snapshot taken when the request arrived (the same one X-Model-Version names)."""
    snapshot = request.scope.get(SNAPSHOT_SCOPE_KEY)
    return snapshot if isinstance(snapshot, Snapshot) else services_of(request).holder.snapshot


async def get_services(request: Request) -> Services:
    return services_of(request)


async def get_snapshot(request: Request) -> Snapshot:
    return snapshot_of(request)


async def get_runtime(request: Request) -> ModelRuntime:
    """The served model, or 503 problem+json saying why there is none."""
    snapshot = snapshot_of(request)
    if snapshot.runtime is None:
        raise ApiProblem(503, "model-unavailable", snapshot.detail, title="No model to serve")
    return snapshot.runtime


def model_call(query: type[Q]) -> Callable[[Request], Awaitable[ModelCall[Q]]]:
    """The dependency of a model route whose query parameters are `query`.

    With no model to serve it answers 503 before looking at the query (then 422 if invalid).
    The Accept header is read here, not declared: it is no API parameter.
    """

    async def solve(request: Request) -> ModelCall[Q]:
        runtime = await get_runtime(request)
        output = negotiate(request.headers.get("accept"))
        return ModelCall(services_of(request), runtime, output, read_query(request, query))

    return solve


def new_seed(seed: int | None) -> int:
    """The request's seed, or a fresh one (reported back, so any result can be repeated)."""
    return secrets.randbelow(MAX_SEED + 1) if seed is None else seed


def rng_for(seed: int) -> np.random.Generator:
    """A generator local to one request: the same seed gives the same draws on any thread."""
    return np.random.default_rng(seed)


ServicesDep = Annotated[Services, Depends(get_services)]
SnapshotDep = Annotated[Snapshot, Depends(get_snapshot)]
