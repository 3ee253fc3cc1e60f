"""Operational routes: liveness, readiness, metrics, and the model report."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from service.http.deps import ServicesDep, SnapshotDep
from service.http.metrics import METRICS_CONTENT_TYPE
from service.http.problems import ApiProblem, problem_responses
from service.http.schemas import Health, ModelsResponse, Readiness, ServingModel, VersionInfo

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process answers (it does not look at the model)."""
    return Health()


@router.get("/readyz", response_model=Readiness, responses=problem_responses(503))
async def readyz(snapshot: SnapshotDep) -> Readiness:
    """Readiness: 200 while a validated model is served, else 503 saying why."""
    if snapshot.runtime is None:
        raise ApiProblem(503, "model-unavailable", snapshot.detail, title="No model to serve")
    return Readiness(model_version=snapshot.version_label, detail=snapshot.detail)


METRICS_EXAMPLE = "# TYPE vae_model_ready gauge\nvae_model_ready 1.0\n"


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format.",
            "content": {"text/plain": {"schema": {"type": "string"}, "example": METRICS_EXAMPLE}},
        }
    },
)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics: requests, latencies, in-flight requests, model and reloads."""
    return Response(services.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)


@router.get(
    "/v1/models", response_model=ModelsResponse, tags=["models"], responses=problem_responses(503)
)
async def models(snapshot: SnapshotDep, services: ServicesDep) -> ModelsResponse:
    """The served manifest, every version seen, and why any were rejected."""
    runtime = snapshot.runtime
    serving = None
    if runtime is not None:
        serving = ServingModel(
            version=runtime.version, source=runtime.source, manifest=runtime.manifest.document
        )
    return ModelsResponse(
        served_by=services.served_by,
        ready=runtime is not None,
        detail=snapshot.detail,
        serving=serving,
        versions=[
            VersionInfo(version=v.version, source=v.source, status=v.status, reason=v.reason)
            for v in snapshot.versions
        ],
    )
