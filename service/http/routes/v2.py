"""API v2: the Open Inference Protocol (KServe v2, Triton's HTTP/REST API), beside v1.

Three models over the served version's graphs: `encoder` (x -> mu, logvar), `decoder` (z ->
probs, logits) and `vae` (x -> probs, mu, logvar: the reconstruction of mu, one run of the
fused graph when the version has it). Versions are the model repository's; only the served
one answers, and another is a 404 naming the served one: this service holds one version,
and answering a request for another from it would be a silent substitution. Small requests
go through the same executor and micro-batching as v1. Errors are `{"error": "..."}`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import Response

from service import __version__
from service.http.deps import services_of, snapshot_of
from service.http.oip import (
    BINARY_MEDIA_TYPE,
    HEADER_LENGTH,
    Array,
    ErrorBody,
    InferRequest,
    ProtocolError,
    TensorSpec,
    decompressed,
    input_tensors,
    read_request,
    response_body,
    wanted_outputs,
)
from service.inference.executor import Work
from service.inference.jobs import Job, Result, Rows
from service.model.runtime import ModelRuntime
from service.settings import Settings


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    """An inference response (the JSON header, when binary data follows)."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


SERVER_NAME = "vae-mnist"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "model_configuration"]


@dataclass(frozen=True)
class ModelSpec:
    """A protocol model: its tensors, from the served version's manifest."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def metadata(self, version: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [str(version)],
            "platform": PLATFORM,
            "inputs": [t.metadata() for t in self.inputs],
            "outputs": [t.metadata() for t in self.outputs],
        }


def models(runtime: ModelRuntime) -> dict[str, ModelSpec]:
    """The protocol's models over one version."""
    pixels, latent = runtime.manifest.pixels, runtime.manifest.latent_dim
    x, z = TensorSpec("x", pixels), TensorSpec("z", latent)
    mu, logvar = TensorSpec("mu", latent), TensorSpec("logvar", latent)
    probs, logits = TensorSpec("probs", pixels), TensorSpec("logits", pixels)
    return {
        "encoder": ModelSpec("encoder", (x,), (mu, logvar)),
        "decoder": ModelSpec("decoder", (z,), (probs, logits)),
        "vae": ModelSpec("vae", (x,), (probs, mu, logvar)),
    }


def resolve(request: Request, name: str, version: str | None) -> tuple[ModelRuntime, ModelSpec]:
    """The served runtime and the named model: 503 with none served, 404 for an unknown
    model, or a version that is not the served one."""
    snapshot = snapshot_of(request)
    runtime = snapshot.runtime
    if runtime is None:
        raise ProtocolError(503, f"no model is served: {snapshot.detail}")
    spec = models(runtime).get(name)
    if spec is None:
        raise ProtocolError(404, f"unknown model {name!r}; models: encoder, decoder, vae")
    if version is not None and version != str(runtime.version):
        raise ProtocolError(
            404,
            f"model {name!r} version {version!r} is not served; the served version is "
            f"{runtime.version}",
        )
    return runtime, spec


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "A malformed request, or tensors that do not fit the model."),
        (404, "An unknown model, or a version that is not served."),
        (413, "The body is larger than VAE_MAX_BODY_BYTES."),
        (503, "No model is served, or too many requests are in flight (Retry-After)."),
    )
}
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": InferRequest.model_json_schema()},
            BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def router(settings: Settings) -> APIRouter:
    """The v2 routes."""
    api = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])
    _add_server(api)
    _add_models(api)
    _add_infer(api, settings)
    return api


def _add_server(api: APIRouter) -> None:
    @api.get("", responses=ERRORS)
    async def server_metadata() -> dict[str, Any]:
        """Server metadata: name, version and the protocol extensions supported."""
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    @api.get("/health/live")
    async def server_live() -> dict[str, bool]:
        """Liveness: the process answers."""
        return {"live": True}

    @api.get("/health/ready", responses=ERRORS)
    async def server_ready(request: Request) -> dict[str, bool]:
        """Readiness: 200 while a validated model is served, else 503 saying why."""
        snapshot = snapshot_of(request)
        if snapshot.runtime is None:
            raise ProtocolError(503, f"no model is served: {snapshot.detail}")
        return {"ready": True}


Endpoint = Callable[[Request, str, str | None], Awaitable[Any]]


def _both_versions(api: APIRouter, path: str, endpoint: Endpoint, **route: Any) -> None:
    """Add `endpoint` at /models/{name}`path` (the served version) and at
    /models/{name}/versions/{version}`path`."""

    async def served(request: Request, name: str) -> Any:
        return await endpoint(request, name, None)

    async def versioned(request: Request, name: str, version: str) -> Any:
        return await endpoint(request, name, version)

    for suffix, handler in (("", served), ("/versions/{version}", versioned)):
        operation = endpoint.__name__ + ("_version" if suffix else "")
        api.add_api_route(
            "/models/{name}" + suffix + path,
            handler,
            name=operation,
            description=endpoint.__doc__,
            **route,
        )


def _add_models(api: APIRouter) -> None:
    _both_versions(api, "", model_metadata, methods=["GET"], responses=ERRORS)
    _both_versions(api, "/ready", model_ready, methods=["GET"], responses=ERRORS)
    _both_versions(api, "/config", model_config, methods=["GET"], responses=ERRORS)


async def model_metadata(request: Request, name: str, version: str | None) -> Any:
    """Model metadata: versions, platform, inputs and outputs (datatype, shape, -1 rows)."""
    runtime, spec = resolve(request, name, version)
    return spec.metadata(runtime.version)


async def model_ready(request: Request, name: str, version: str | None) -> Any:
    """200 when the model (and version) is served; 404 or 503 saying why not."""
    resolve(request, name, version)
    return {"name": name, "ready": True}


async def model_config(request: Request, name: str, version: str | None) -> Any:
    """The model's configuration as Triton's clients and perf_analyzer read it."""
    _, spec = resolve(request, name, version)

    def tensors(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
        return [{"name": t.name, "data_type": "TYPE_FP32", "dims": [t.width]} for t in specs]

    return {
        "name": spec.name,
        "platform": PLATFORM,
        "max_batch_size": services_of(request).settings.max_batch,
        "input": tensors(spec.inputs),
        "output": tensors(spec.outputs),
    }


def _add_infer(api: APIRouter, settings: Settings) -> None:
    async def infer(request: Request, name: str, version: str | None) -> Response:
        """Inference: tensors as JSON, or Triton's binary tensor data extension."""
        runtime, spec = resolve(request, name, version)
        body = decompressed(
            await request.body(), request.headers.get("content-encoding"), settings.max_body_bytes
        )
        infer_request, binary = read_request(body, request.headers.get(HEADER_LENGTH))
        tensors = input_tensors(infer_request, binary, spec.inputs)
        rows = len(next(iter(tensors.values())))
        if rows > settings.max_batch:
            raise ProtocolError(400, f"{rows} rows; at most {settings.max_batch} per request")
        wanted = wanted_outputs(infer_request, tuple(t.name for t in spec.outputs))
        answer = partial(_answer, spec.name, runtime.version, infer_request.id, wanted)
        executor = services_of(request).executor
        if spec.name == "decoder":
            compute = partial(_decode, runtime, tensors["z"], answer)
            return await executor.run("infer:decoder", Work(0, rows), compute)
        decode = spec.name == "vae"
        finish = partial(_finish, answer)
        job = Job(runtime, Rows(tensors["x"]), None, "mean" if decode else None, decode, finish)
        return await executor.run_job(f"infer:{spec.name}", job)

    _both_versions(
        api,
        "/infer",
        infer,
        methods=["POST"],
        responses={200: {"model": InferResponse, "description": "The outputs."}, **ERRORS},
        openapi_extra=INFER_BODY,
    )


Answer = Callable[[dict[str, Array]], Response]


def _finish(answer: Answer, result: Result) -> Response:
    outputs = {"mu": result.mu, "logvar": result.logvar}
    if result.probs is not None:
        outputs["probs"] = result.probs
    return answer(outputs)


def _decode(runtime: ModelRuntime, z: Array, answer: Answer) -> Response:
    logits, probs = runtime.decode_logits(z)
    return answer({"probs": probs, "logits": logits})


def _answer(
    model: str,
    version: int,
    request_id: str | None,
    wanted: dict[str, bool],
    arrays: dict[str, Array],
) -> Response:
    """The response of the outputs asked for (built where the model ran)."""
    outputs = {name: (arrays[name], binary) for name, binary in wanted.items()}
    body, headers = response_body(model, version, request_id, outputs)
    return Response(body, headers=headers)
