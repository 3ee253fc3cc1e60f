"""/docs (Swagger UI) renders from the service's own files: nothing is fetched off 127.0.0.1."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable

import pytest

from tests.browser.browser_helpers import Visit, is_local, playwright_expect

pytestmark = pytest.mark.browser
expect = playwright_expect()

# Each operation block as [method, path] (an operation with two tags is shown twice).
SHOWN = """(blocks) => blocks.map((b) => [
  b.querySelector('.opblock-summary-method').textContent.toLowerCase(),
  b.querySelector('[data-path]').dataset.path,
])"""


def test_docs_render_the_operations_offline(visit: Callable[..., Visit], live_url: str) -> None:
    with urllib.request.urlopen(live_url + "/openapi.json", timeout=10) as response:
        paths = json.load(response)["paths"]
    operations = [(method, path) for path, item in paths.items() for method in item]
    assert len(operations) >= 10
    visitor = visit()
    page = visitor.page
    page.goto(live_url + "/docs")
    expect(page.locator(".opblock").first).to_be_visible()
    shown = page.locator(".opblock").evaluate_all(SHOWN)
    assert {(method, path) for method, path in shown} == set(operations)
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("vae-mnist")

    page.locator(".opblock-get [data-path='/v1/sample']").click()  # an operation opens
    expect(page.locator(".opblock.is-open .parameters")).to_contain_text("temperature")
    visitor.screenshot("docs")
    assert any(url.endswith("/docs/assets/swagger-ui-bundle.js") for url in visitor.requests)
    assert any(url.endswith("/openapi.json") for url in visitor.requests)
    assert visitor.blocked == []  # nothing was aimed off 127.0.0.1 (and so aborted)
    assert all(is_local(url) for url in visitor.requests), visitor.requests


def test_redoc_is_not_served(visit: Callable[..., Visit], live_url: str) -> None:
    response = visit().page.goto(live_url + "/redoc")
    assert response is not None and response.status == 404
