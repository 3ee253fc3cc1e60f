"""The web page at `/` and Swagger UI at `/docs`, both served from files in the package.

FastAPI's own `/docs` loads Swagger UI from a CDN; these assets are vendored
(`service/static/docs`, from swagger-ui-dist) so the documentation renders offline too.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

from service.settings import STATIC_DIR, Settings

DOCS_ASSETS_DIR = STATIC_DIR / "docs"
DOCS_ASSETS_PATH = "/docs/assets"


def install(app: FastAPI, settings: Settings) -> None:
    """Add `/docs` and its assets, then the page at `/`: last, since a mount at `/` shadows
    every route added after it."""
    openapi_url = app.openapi_url or "/openapi.json"
    title = f"{app.title}: API documentation"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        """Swagger UI for the OpenAPI document, from local assets only."""
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_PATH}/favicon-32x32.png",
            # No badge that asks the public validator about the document.
            swagger_ui_parameters={"validatorUrl": None},
        )

    # The assets ship with the package: a missing directory fails at start-up, not in a browser.
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")
    if settings.static_dir.is_dir():
        app.mount("/", StaticFiles(directory=settings.static_dir, html=True), name="static")
