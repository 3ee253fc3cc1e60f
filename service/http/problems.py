"""Every error response, in one place: RFC 9457 problem+json bodies, and the handlers that
map each error, the layers' own (an image that cannot be used) and HTTP's, to its status."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from service.http.oip import ProtocolError
from service.images.errors import ImageError
from service.model.runtime import NonFiniteOutputError

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://vae-mnist.dev/problems/"
# nginx's code for "client closed request": what the metrics count when a client hangs up
# before its body has arrived (Starlette raises ClientDisconnect; it is not a server error).
CLIENT_CLOSED_REQUEST = 499
V2_PREFIX = "/v2"  # the Open Inference Protocol, whose errors are {"error": "..."}
# A withdrawn version is replaced by the next poll, which it wakes at once: a load takes well
# under a second.
WITHDRAWN_RETRY_AFTER_S = 1

log = logging.getLogger(__name__)


class ProblemItem(BaseModel):
    """One invalid input."""

    field: str = Field(description="Where: e.g. `query.n`, `body.z[2]`, `files[1]`.")
    message: str = Field(description="What was expected.")
    type: str = Field(description="A machine-readable error code.")


class Problem(BaseModel):
    """An RFC 9457 problem detail."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": PROBLEM_BASE + "invalid-input",
                    "title": "Invalid input",
                    "status": 422,
                    "detail": "query.n: Input should be less than or equal to 256",
                    "field": "query.n",
                    "errors": [
                        {
                            "field": "query.n",
                            "message": "Input should be less than or equal to 256",
                            "type": "less_than_equal",
                        }
                    ],
                }
            ]
        }
    )

    type: str = Field(description="A URI naming the kind of problem.")
    title: str = Field(description="A short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong with this request, and what was expected.")
    field: str | None = Field(None, description="The input at fault, when there is one.")
    errors: list[ProblemItem] | None = Field(None, description="Every invalid input.")


class ApiProblem(HTTPException):
    """Raised anywhere to answer with a problem+json (a Starlette HTTPException subclass)."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        title: str | None = None,
        field: str | None = None,
        errors: Sequence[ProblemItem] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.problem = Problem(
            type=PROBLEM_BASE + slug,
            title=title or HTTPStatus(status).phrase,
            status=status,
            detail=detail,
            field=field,
            errors=list(errors) if errors else None,
        )

    def body(self) -> bytes:
        return self.problem.model_dump_json(exclude_none=True).encode()

    def response(self) -> Response:
        return Response(self.body(), self.status_code, self.headers, PROBLEM_MEDIA_TYPE)


def invalid(field: str, message: str, *, code: str = "invalid") -> ApiProblem:
    """A 422 naming one field and what it should have been."""
    return invalid_items([ProblemItem(field=field, message=message, type=code)])


def invalid_items(items: list[ProblemItem]) -> ApiProblem:
    """A 422 listing every problem found; the first one is the headline."""
    first = items[0]
    return ApiProblem(
        422,
        "invalid-input",
        f"{first.field}: {first.message}",
        title="Invalid input",
        field=first.field,
        errors=items,
    )


def from_validation_error(exc: RequestValidationError) -> ApiProblem:
    """FastAPI's 422 as problem+json: every error with a dotted field path."""
    return from_errors(exc.errors())


def from_errors(errors: Iterable[Mapping[str, Any]], where: tuple[str, ...] = ()) -> ApiProblem:
    """pydantic's errors as one 422; `where` prefixes each location (("query",), ("body",))."""
    items = [_item(error, where) for error in errors]
    return invalid_items(items or [ProblemItem(field="request", message="invalid", type="invalid")])


def field_path(loc: Sequence[int | str]) -> str:
    """('body', 'z', 2) -> 'body.z[2]'."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "request"


def _item(error: Mapping[str, Any], where: tuple[str, ...]) -> ProblemItem:
    message = str(error.get("msg", "invalid"))
    value = error.get("input")
    if isinstance(value, str | int | float) and len(str(value)) <= 40:
        message += f" (got {json.dumps(value)})"
    return ProblemItem(
        field=field_path((*where, *error.get("loc", ()))),
        message=message,
        type=str(error.get("type")),
    )


def answer(path: str, problem: ApiProblem) -> Response:
    """The problem as the API of `path` writes its errors: problem+json (v1 and the rest),
    or the Open Inference Protocol's `{"error": "..."}` under /v2."""
    if path == V2_PREFIX or path.startswith(V2_PREFIX + "/"):
        error = ProtocolError(problem.status_code, problem.problem.detail, problem.headers)
        return protocol_response(error)
    return problem.response()


def protocol_response(error: ProtocolError) -> Response:
    return Response(error.body(), error.status, error.headers, "application/json")


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ApiProblem):
        assert isinstance(exc, HTTPException)
        slug = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "-")
        exc = ApiProblem(exc.status_code, slug, str(exc.detail), headers=exc.headers)
    return answer(request.scope["path"], exc)


async def _on_protocol_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProtocolError)
    return protocol_response(exc)


def from_image_error(exc: ImageError) -> ApiProblem:
    """An image that cannot be used: a 422 naming its field, code and what was expected."""
    return invalid(exc.field, exc.message, code=exc.code)


async def _on_image_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ImageError)
    return from_image_error(exc).response()


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return answer(request.scope["path"], from_validation_error(exc))


async def _on_client_disconnect(request: Request, exc: Exception) -> Response:
    """The client left while its body was being read: nobody to answer, and no server error."""
    log.info("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def model_withdrawn(exc: NonFiniteOutputError) -> ApiProblem:
    """The one right 5xx: the model is broken, not the request. The version is withdrawn
    (service.model.watcher) and another serves the retry."""
    return ApiProblem(
        503,
        "model-withdrawn",
        f"model version {exc.version} produced non-finite output and was withdrawn; retry",
        title="Model withdrawn",
        headers={"Retry-After": str(WITHDRAWN_RETRY_AFTER_S)},
    )


async def _on_non_finite_output(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NonFiniteOutputError)
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return answer(request.scope["path"], model_withdrawn(exc))


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    problem = ApiProblem(500, "internal-error", "an unexpected error; this is a bug")
    return answer(request.scope["path"], problem)


def install_handlers(app: FastAPI) -> None:
    """Route HTTPException, validation errors, image errors, a broken model's output and
    anything unexpected to problem+json (or the protocol's error under /v2)."""
    app.add_exception_handler(HTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(ImageError, _on_image_error)
    app.add_exception_handler(ProtocolError, _on_protocol_error)
    app.add_exception_handler(ClientDisconnect, _on_client_disconnect)
    app.add_exception_handler(NonFiniteOutputError, _on_non_finite_output)
    app.add_exception_handler(Exception, _on_unexpected)


STATUS_DESCRIPTIONS = {
    400: "Malformed request.",
    408: "The body did not arrive within `VAE_BODY_TIMEOUT_S` of the request's start.",
    413: "The body is larger than `VAE_MAX_BODY_BYTES` (also when sent chunked).",
    415: "The Content-Type is not one this operation accepts.",
    422: "Invalid input: the problem names the field and what was expected.",
    503: "No valid model is loaded, too many requests are in flight, or the model gave a "
    "non-finite output and was withdrawn (see Retry-After).",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for problem+json error statuses."""
    return {
        status: {
            "description": STATUS_DESCRIPTIONS[status],
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


def add_problem_schemas(openapi: dict[str, Any]) -> None:
    """Put Problem and ProblemItem into the document's components."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    document = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(document.pop("$defs", {}))
    schemas["Problem"] = document
