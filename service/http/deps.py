"""Typed dependencies: what a handler may ask for, and the process-wide services behind them."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated, Generic

import numpy as np
from fastapi import Depends, Request

from service.http.deadlines import BodyDeadlines
from service.http.metrics import Metrics
from service.http.problems import ApiProblem
from service.http.query import Q, read_query
from service.http.responses import OutputFormat, negotiate
from service.inference.executor import Executor
from service.model.runtime import ModelRuntime
from service.model.watcher import ModelHolder, Snapshot
from service.settings import Settings

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
    served_by: str  # which replica and process answers: X-Served-By, /v1/models, /metrics


@dataclass(frozen=True)
class ModelCall(Generic[Q]):
    """What a model route needs: the services, the served model, the response format from
    Accept, and the route's query parameters."""

    services: Services
    runtime: ModelRuntime
    output: OutputFormat
    query: Q


def services_of(request: Request) -> Services:
    services = request.app.state.services
    assert isinstance(services, Services)
    return services


def snapshot_of(request: Request) -> Snapshot:
    """The snapshot taken when the request arrived (the same one X-Model-Version names)."""
    snapshot = request.scope.get(SNAPSHOT_SCOPE_KEY)
    return snapshot if isinstance(snapshot, Snapshot) else services_of(request).holder.snapshot


def runtime_of(request: Request) -> ModelRuntime:
    """The served model, or 503 problem+json saying why there is none."""
    snapshot = snapshot_of(request)
    if snapshot.runtime is None:
        raise ApiProblem(503, "model-unavailable", snapshot.detail, title="No model to serve")
    return snapshot.runtime


def model_call(request: Request, query: type[Q]) -> ModelCall[Q]:
    """Everything a model route reads from its request, its query validated in one go.

    With no model to serve it answers 503 before looking at the query (then 422 if invalid).
    The Accept header is read here, not declared: it is no API parameter. Model routes call
    this directly rather than through `Depends`: FastAPI's solving of a dependency cost
    reconstruct 0.48x -> 0.42x of the trivial endpoint's throughput (docs/benchmarks.md).
    """
    runtime = runtime_of(request)
    output = negotiate(request.headers.get("accept"))
    return ModelCall(services_of(request), runtime, output, read_query(request, query))


async def get_services(request: Request) -> Services:
    return services_of(request)


async def get_snapshot(request: Request) -> Snapshot:
    return snapshot_of(request)


def new_seed(seed: int | None) -> int:
    """The request's seed, or a fresh one (reported back, so any result can be repeated)."""
    return secrets.randbelow(MAX_SEED + 1) if seed is None else seed


def rng_for(seed: int) -> np.random.Generator:
    """A generator local to one request: the same seed gives the same draws on any thread."""
    return np.random.default_rng(seed)


ServicesDep = Annotated[Services, Depends(get_services)]
SnapshotDep = Annotated[Snapshot, Depends(get_snapshot)]
