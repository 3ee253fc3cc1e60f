"""Query strings read into pydantic models: one validation per request, and their OpenAPI.

FastAPI solves each declared query parameter on its own on every request (about 9 us each
here, and the model routes have four or five: more than the model costs; docs/benchmarks.md).
A route instead declares one `QueryModel`, reads it with `read_query` (a single pydantic
validation, the same coercions and messages FastAPI would give) and documents it with
`openapi_parameters`.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request

from service.http.problems import from_errors

Q = TypeVar("Q", bound="QueryModel")


class QueryModel(BaseModel):
    """A route's query parameters; unknown ones are ignored, as FastAPI ignores them."""

    model_config = ConfigDict(extra="ignore", frozen=True)


_DEFAULTS: dict[type[QueryModel], QueryModel] = {}  # each model's all-defaults instance


def read_query(request: Request, model: type[Q]) -> Q:
    """Validate the query string; a repeated parameter counts with its last value.

    Raises a 422 problem naming each parameter at fault (`query.<name>`).
    """
    try:
        if not request.scope["query_string"]:  # all defaults: one shared (frozen) instance
            return _defaults(model)
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise from_errors(exc.errors(include_url=False), ("query",)) from exc


def _defaults(model: type[Q]) -> Q:
    instance = _DEFAULTS.get(model)
    if instance is None:
        instance = _DEFAULTS[model] = model()
    return cast(Q, instance)


def openapi_parameters(model: type[QueryModel]) -> list[dict[str, Any]]:
    """The OpenAPI `parameters` of a query model, one per field, each with its own schema."""
    schema = model.model_json_schema()
    if "$defs" in schema:  # a parameter's schema must stand alone (use Literal, not Enum)
        raise TypeError(f"{model.__name__}: query fields must not need shared definitions")
    required = set(schema.get("required", ()))
    parameters = []
    for name, field_schema in schema.get("properties", {}).items():
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        if "description" in field_schema:  # in both places, as FastAPI writes it
            parameter["description"] = field_schema["description"]
        parameter["schema"] = field_schema
        parameters.append(parameter)
    return parameters
