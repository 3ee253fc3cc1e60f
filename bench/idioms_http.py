"""The HTTP layer's cases of bench/idioms.py: the query, the metrics, the deadline timers,
the middleware's style, FastAPI's dependency and parameter solving.

The asyncio and ASGI cases run on uvloop, as vae-serve does. The ASGI ones call the real app
(`create_app`, its lifespan running, the model loaded) through its ASGI interface, without
HTTP: what they measure is the app's own work per request. Each pair is two routes of the
same app, or two wrappers around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from ab import Case, equal
from fastapi import Depends, Query, Request
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.app import ServiceApp, create_app
from service.http.deadlines import BodyDeadlines, body_timed_out
from service.http.deps import ModelCall, model_call
from service.http.metrics import Metrics
from service.http.query import read_query
from service.http.routes.common import BinarizeField
from service.http.routes.images import ReconstructQuery
from service.http.schemas import ReconstructMode
from service.images.grid import MAX_SCALE
from service.images.preprocess import Preprocess
from service.settings import Settings

BODY_TIMEOUT_S = 30.0
HEADER = (b"x-bench", b"1")
Call = Callable[[], Awaitable[Any]]


# --- synchronous ---------------------------------------------------------------------------


def sync_cases() -> Iterator[Case]:
    scope = {"type": "http", "query_string": b"", "headers": []}

    def validated() -> ReconstructQuery:  # read_query without the all-defaults instance
        return ReconstructQuery.model_validate(dict(Request(scope).query_params))

    def shared() -> ReconstructQuery:
        return read_query(Request(scope), ReconstructQuery)

    yield Case(
        "one all-defaults instance for an empty query",
        "query.read_query",
        shared,
        validated,
        1,
        equal,
    )
    metrics = Metrics()

    def inference_labels() -> None:
        metrics.inference_seconds.labels(operation="reconstruct").observe(0.001)

    def request_labels() -> None:
        labels = {"route": "/v1/reconstruct", "method": "POST", "status": "200"}
        metrics.requests.labels(**labels).inc()
        metrics.request_seconds.labels(**labels).observe(0.001)

    yield Case(
        "cached labelled child",
        "metrics.observe_inference",
        lambda: metrics.observe_inference("reconstruct", 0.001),
        inference_labels,
        1,
    )
    yield Case(
        "cached labelled children",
        "metrics.observe_request",
        lambda: metrics.observe_request("/v1/reconstruct", "POST", 200, 0.001),
        request_labels,
        1,
    )


# --- asyncio: the deadline sweeps ---------------------------------------------------------


async def message() -> Message:
    """A receive whose message is there already (a small body arrives with its head)."""
    return {"type": "http.request", "body": b"", "more_body": False}


async def timed_receive(receive: Receive, start: float) -> Message:
    """The plain form of BodyDeadlines.receive: a timer around the wait."""
    try:
        async with asyncio.timeout(start + BODY_TIMEOUT_S - time.perf_counter()):
            return await receive()
    except TimeoutError:
        raise body_timed_out(BODY_TIMEOUT_S) from None


@dataclass
class Head:
    """What GuardedHttpToolsProtocol keeps of a request head's deadline."""

    since: float | None = None


def loop_cases() -> Iterator[Case]:
    """The request body's deadline (BodyDeadlines.receive, or a timer around the receive)
    and the request head's (a clock read, or a timer)."""
    deadlines = BodyDeadlines(BODY_TIMEOUT_S)

    async def swept() -> Message:
        return await deadlines.receive(message, time.perf_counter())

    async def timed() -> Message:
        return await timed_receive(message, time.perf_counter())

    yield Case(
        "body deadline: one sweep, not a timer per request",
        "deadlines.BodyDeadlines",
        swept,
        timed,
        1,
        equal,
    )
    head = Head()

    async def clock() -> None:  # on_message_begin, then on_headers_complete
        head.since = asyncio.get_running_loop().time()
        head.since = None

    async def timer() -> None:
        asyncio.get_running_loop().call_later(BODY_TIMEOUT_S, print).cancel()

    yield Case(
        "(reverted) head deadline: one sweep, not a timer per request",
        "transport.ConnectionGuard",
        clock,
        timer,
        1,
    )


# --- ASGI: the app ------------------------------------------------------------------------


class PureLayer:
    """A pure ASGI middleware that adds a response header: the style of ServiceMiddleware."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), HEADER]
            await send(message)

        await self.app(scope, receive, send_with_header)


class BaseLayer(BaseHTTPMiddleware):
    """The same as Starlette's BaseHTTPMiddleware, the idiomatic style."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers[HEADER[0].decode()] = HEADER[1].decode()
        return response


async def solve(request: Request) -> ModelCall[ReconstructQuery]:
    return model_call(request, ReconstructQuery)


async def direct(request: Request) -> Response:
    """As the model routes read their request: `model_call` called by the handler."""
    return Response(str(model_call(request, ReconstructQuery).runtime.version))


async def declared(call: Annotated[ModelCall[ReconstructQuery], Depends(solve)]) -> Response:
    """The same through FastAPI's Depends."""
    return Response(str(call.runtime.version))


async def one_model(request: Request) -> Response:
    """The query read as one model (reconstruct's)."""
    return Response(read_query(request, ReconstructQuery).model_dump_json())


async def parameters(
    mode: ReconstructMode = "mean",
    seed: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
    scale: Annotated[int, Query(ge=1, le=MAX_SCALE)] = 1,
    preprocess: Preprocess = "mnist",
    binarize: BinarizeField = True,
) -> Response:
    """The same query declared as FastAPI parameters, one by one."""
    query = ReconstructQuery(
        mode=mode, seed=seed, scale=scale, preprocess=preprocess, binarize=binarize
    )
    return Response(query.model_dump_json())


def add_first(app: ServiceApp, path: str, endpoint: Callable[..., Any]) -> None:
    """A POST route matched before the app's own."""
    app.add_api_route(path, endpoint, methods=["POST"], include_in_schema=False)
    app.router.routes.insert(0, app.router.routes.pop())


async def call(app: ASGIApp, path: str, query: bytes = b"", body: bytes = b"") -> int:
    """One request through the ASGI interface; its status."""
    headers = [(b"host", b"bench"), (b"content-length", str(len(body)).encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST" if body else "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [*headers, (b"content-type", b"image/png")] if body else headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    received = False
    status = 0

    async def receive() -> Message:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Future()  # as uvicorn's: nothing more until the client goes
        raise AssertionError

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


@contextlib.contextmanager
def serving(runner: asyncio.Runner, model_dir: Path | None) -> Iterator[ServiceApp]:
    """The app with its lifespan running on `runner`'s loop (the embedded model, or
    `model_dir`'s repository's newest version), and the benchmark's routes."""
    repository = None if model_dir is None else model_dir.parents[1]
    app = create_app(Settings(model_repository=repository, access_log=False))
    for path, endpoint in (
        ("/bench/direct", direct),
        ("/bench/declared", declared),
        ("/bench/one-model", one_model),
        ("/bench/parameters", parameters),
    ):
        add_first(app, path, endpoint)
    lifespan = app.router.lifespan_context(app)
    runner.run(lifespan.__aenter__())
    try:
        yield app
    finally:
        runner.run(lifespan.__aexit__(None, None, None))


def asgi(app: ASGIApp, path: str, query: bytes = b"", body: bytes = b"") -> Call:
    return lambda: call(app, path, query, body)


def app_cases(app: ServiceApp, png: bytes) -> Iterator[Case]:
    """GET /healthz through one more layer that adds a header, pure ASGI or Starlette's
    BaseHTTPMiddleware; a model route's `model_call` called by the handler or through
    Depends; its query (`mode=mean`) read as one model or as FastAPI's parameters."""
    pure, base = asgi(PureLayer(app), "/healthz"), asgi(BaseLayer(app), "/healthz")
    yield Case(
        "middleware: pure ASGI, not BaseHTTPMiddleware",
        "middleware.ServiceMiddleware",
        pure,
        base,
        1,
        equal,
    )
    direct, declared = asgi(app, "/bench/direct", body=png), asgi(app, "/bench/declared", body=png)
    yield Case(
        "model routes call `model_call`, not Depends", "deps.model_call", direct, declared, 1, equal
    )
    mode = b"mode=mean"
    one, each = asgi(app, "/bench/one-model", mode, png), asgi(app, "/bench/parameters", mode, png)
    yield Case(
        "query: one model, not FastAPI's parameters", "query.read_query", one, each, 1, equal
    )
