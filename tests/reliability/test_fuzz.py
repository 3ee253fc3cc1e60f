"""Schemathesis against the app's own OpenAPI document: no 5xx, every response as declared.

Runs in-process on the ASGI app with its lifespan running (the shipped default model is loaded),
over every operation, with positive and negative data, every built-in check, and a fixed
derandomised seed so that CI repeats itself. Limits are set small so that boundary values
are cheap to reach; the document declares whatever the settings say, so the limits are
fuzzed too.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from schemathesis.config import HealthCheck
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import positive_data_acceptance

from bench.soak import SEED_MODEL
from service.http.app import create_app
from service.settings import Settings
from tests.reliability.images import FORMAT_OF, image_files
from tests.service.service_helpers import install

EXAMPLES_PER_OPERATION = 100  # Hypothesis examples in the fuzzing phase of each operation
NO_INPUTS = {  # one request each
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /v1/models",
    "GET /v2",
    "GET /v2/health/live",
    "GET /v2/health/ready",
}

# What `positive_data_acceptance` may see refused although the request is schema-valid, because
# it is about the pixels and a schema cannot say it (docs/api.md, Errors):
# - any image: no ink at all (blank), or not 28x28 under preprocess=none;
# - a multipart part: not a decodable image. The schema's `format: binary` admits any bytes;
#   schemathesis 4.32.5 draws parts as random bytes, and with `encoding.contentType` plus a
#   registered image strategy it replaces the `files` array by one file, which breaks
#   interpolate's two-file minimum. So parts stay random bytes, and their refusal is allowed.
PIXEL_REJECTIONS = {"blank_image", "wrong_size"}
# Across fields, which a schema cannot say either: GET /v1/sample's digit= draws from the fitted
# density, so it refuses prior=standard beside it.
CROSS_FIELD_REJECTIONS = {"digit_needs_fitted_prior"}
PART_REJECTIONS = {"not_an_image", "corrupt_image", "empty"}
PART_FIELD = re.compile(r"files\[\d+\]")
# API v2 (the Open Inference Protocol): a schema-valid request may still name another model
# (404) or hold tensors whose names, shapes and data disagree with the model (400): those
# constraints run across fields and path, which the protocol's schema leaves to the server.
V2_REJECTIONS = {400, 404}

# Raw image bodies are real files of every format and pixel mode (tests/reliability/images.py)
# instead of schemathesis' one 1x1 sample per type. The registry is process-wide; this module
# is the suite's only user of schemathesis.
for _media_type, _format in FORMAT_OF.items():
    schemathesis.openapi.media_type(_media_type, image_files(_format))


@pytest.fixture(scope="module")
def calls() -> Iterator[Counter[tuple[str, str]]]:
    """(operation, phase) -> requests sent; checked once every selected operation has run."""
    counter: Counter[tuple[str, str]] = Counter()
    yield counter
    for operation in {op for op, _ in counter} - NO_INPUTS:
        sent = counter[operation, "fuzzing"]
        assert sent >= EXAMPLES_PER_OPERATION, f"{operation}: {sent} fuzzing examples"


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The app's OpenAPI document, loaded through the app itself (which starts its lifespan)."""
    root = tmp_path_factory.mktemp("fuzz-repo")
    (root / "vae").mkdir()
    install(root, SEED_MODEL, 1)  # the shipped default model, latent_dim 64
    settings = Settings(
        model_repository=root,
        embedded_model_dir=root / "no-embedded-model",
        static_dir=root / "no-static",
        max_batch=4,
        max_sample_n=16,
        max_score_k=50,
        max_interpolate_steps=8,
        poll_interval_s=60,
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
    schema.config.generation.update(max_examples=EXAMPLES_PER_OPERATION, deterministic=True)
    # Every example is a real request through the model: on a loaded 2-core machine that is
    # "too slow" for Hypothesis' taste, which says nothing about the service.
    schema.config.update(suppress_health_check=[HealthCheck.too_slow])
    yield schema
    asgi.shutdown_lifespans()  # schemathesis would otherwise keep it running until exit


schema = schemathesis.pytest.from_fixture("api_schema")


def positive_data_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    """`positive_data_acceptance`, except for the pixel-level refusals listed above."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        if case.path.startswith("/v2/") and response.status_code in V2_REJECTIONS:
            assert set(json.loads(response.content)) == {"error"}
            return None
        if response.status_code != 422 or not all(
            _allowed(item, multipart=case.media_type == "multipart/form-data")
            for item in _problem_items(response.content)
        ):
            raise
        return None


def _problem_items(body: bytes) -> list[dict[str, Any]]:
    try:
        items = json.loads(body)["errors"]
    except (ValueError, TypeError, KeyError):
        return [{}]
    return items if isinstance(items, list) and items else [{}]


def _allowed(item: dict[str, Any], *, multipart: bool) -> bool:
    kind = item.get("type")
    if kind in PIXEL_REJECTIONS | CROSS_FIELD_REJECTIONS:
        return True
    return multipart and kind in PART_REJECTIONS and PART_FIELD.fullmatch(item.get("field", ""))


@schema.parametrize()
def test_no_5xx_and_every_response_conforms(case: Any, calls: Counter[tuple[str, str]]) -> None:
    calls[case.operation.label, case.meta.phase.name.value] += 1
    response = case.call_and_validate(
        excluded_checks=[positive_data_acceptance], additional_checks=[positive_data_accepted]
    )
    assert response.status_code < 500, response.text
    assert response.headers["x-model-version"] == ["1"]
