"""Content negotiation (PNG or JSON) and the response objects routes return."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from starlette.responses import Response

from service.images import grid as imaging
from service.model.latent import Array

OutputFormat = Literal["png", "json"]
PNG = "image/png"
JSON = "application/json"


def negotiate(accept: str | None) -> OutputFormat:
    """JSON when the Accept header prefers application/json to image/png; PNG otherwise.

    Wildcards count (`*/*`, `application/*`); on a tie PNG wins, so browsers and curl's
    default `*/*` get images.
    """
    if not accept:
        return "png"
    q_json, q_png = _quality(accept, JSON), _quality(accept, PNG)
    return "json" if q_json > q_png else "png"


def _quality(accept: str, media: str) -> float:
    """The q an Accept header gives `media`, by its most specific matching range."""
    kind = media.split("/")[0]
    best: tuple[int, float] = (-1, 0.0)
    for item in accept.split(","):
        fields = [f.strip() for f in item.split(";")]
        rng = fields[0].lower()
        specificity = {media: 2, f"{kind}/*": 1, "*/*": 0}.get(rng)
        if specificity is not None and specificity > best[0]:
            best = (specificity, _q(fields[1:]))
    return best[1]


def _q(params: list[str]) -> float:
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return min(max(float(value), 0.0), 1.0)
            except ValueError:
                return 0.0
    return 1.0


def json_response(body: BaseModel, headers: dict[str, str] | None = None) -> Response:
    return Response(body.model_dump_json(), media_type=JSON, headers=headers)


def png_response(
    probs: Array,
    shape: tuple[int, int],
    scale: int,
    *,
    columns: int | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A PNG of the images in a grid (`columns` per row; near-square by default).

    `scale` is a viewing hint: it is capped so that the PNG stays within MAX_OUTPUT_SIDE.
    """
    count = len(probs)
    columns = columns or imaging.grid_columns(count)
    scale = min(scale, imaging.largest_scale(count, columns, shape))
    return Response(imaging.render(probs, shape, columns, scale), media_type=PNG, headers=headers)


def image_response_doc(model: type[BaseModel], description: str) -> dict[int | str, Any]:
    """OpenAPI for a 200 that is a PNG by default or `model` as JSON."""
    return {
        200: {
            "description": description,
            "model": model,
            "content": {PNG: {"schema": {"type": "string", "format": "binary"}}},
        }
    }
