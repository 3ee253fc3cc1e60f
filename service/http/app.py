"""`create_app(settings)`: the FastAPI application, its lifespan and its OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from service import __version__
from service.http.deadlines import BodyDeadlines
from service.http.deps import Services
from service.http.metrics import Metrics
from service.http.middleware import ServiceMiddleware
from service.http.problems import add_problem_schemas, install_handlers
from service.http.routes import images, latents, ops, page, v2
from service.http.routes.common import describe_latent
from service.inference.executor import Executor
from service.model.watcher import ModelHolder, Watcher
from service.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """\
A variational autoencoder on MNIST, served from ONNX.

Every response carries `X-Model-Version`. Every error is `application/problem+json`
(RFC 9457) naming the field at fault and what was expected. Image operations take one image
as the raw body (`image/png`, `image/jpeg`, `image/webp`, `image/bmp`, `image/gif`) or a
batch as `multipart/form-data` files under the field `files`. Image results are PNG by
default and JSON with `Accept: application/json`.
"""


class ServiceApp(FastAPI):
    """FastAPI with the service middleware outermost and problem schemas in its OpenAPI."""

    def __init__(self, services: Services, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.services = services
        self.state.services = services
        self._openapi_latent_dim: int | None = None

    def build_middleware_stack(self) -> ASGIApp:
        # Outside ServerErrorMiddleware, so even an unexpected 500 is counted and labelled.
        return ServiceMiddleware(super().build_middleware_stack(), self.services)

    def openapi(self) -> dict[str, Any]:
        """The document, rebuilt when a swap changes the served latent_dim."""
        runtime = self.services.holder.snapshot.runtime
        latent_dim = None if runtime is None else runtime.manifest.latent_dim
        if self.openapi_schema is None or latent_dim != self._openapi_latent_dim:
            self.openapi_schema = None
            document = super().openapi()
            add_problem_schemas(document)
            if latent_dim is not None:
                describe_latent(document, latent_dim)
            self._openapi_latent_dim = latent_dim
        return self.openapi_schema or super().openapi()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the best model before serving; poll the repository and sweep the request bodies
    past their deadline until shutdown."""
    services: Services = app.state.services
    watcher = Watcher(services.settings, services.holder, services.metrics.record_refresh)
    await watcher.refresh()
    log.info("%s", services.holder.snapshot.detail)
    tasks = [
        asyncio.create_task(watcher.run(), name="model-repository-watcher"),
        asyncio.create_task(services.deadlines.run(), name="request-body-deadlines"),
    ]
    services.executor.start()
    try:
        yield
    finally:
        services.executor.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def create_app(settings: Settings | None = None) -> ServiceApp:
    """The service app; the model is loaded by its lifespan, not here."""
    settings = settings or Settings()
    metrics = Metrics()
    executor = Executor(
        settings.inference_threads,
        metrics,
        batch_max_size=settings.batch_max_size,
        batch_max_delay_s=settings.batch_max_delay_ms / 1000,
    )
    deadlines = BodyDeadlines(settings.body_timeout_s)
    served_by = f"{socket.gethostname()}/{os.getpid()}"
    metrics.instance.labels(served_by=served_by).set(1)
    services = Services(settings, ModelHolder(), metrics, executor, deadlines, served_by)
    app = ServiceApp(
        services,
        title="vae-mnist",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from vendored assets by routes.page
        redoc_url=None,
    )
    install_handlers(app)
    app.include_router(images.router(settings))
    app.include_router(latents.router(settings))
    app.include_router(ops.router)
    app.include_router(v2.router(settings))
    page.install(app, settings)
    return app
