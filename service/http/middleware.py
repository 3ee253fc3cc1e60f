"""The outermost layer, pure ASGI (BaseHTTPMiddleware costs a task and a copy per request).

For every HTTP request it takes the model snapshot the request will see and names it in
X-Model-Version, counts and times the request, refuses /v1 requests past the in-flight limit
(503 + Retry-After), enforces the body limit from Content-Length and while streaming, and
answers 408 when the body has not all arrived within the body timeout.

The in-flight limit counts work, not transport: a request holds its slot until its response
starts. Sending is bounded by the connection guards (service.transport: the send timeout), so
a client that never reads cannot keep slots from others.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.deps import SNAPSHOT_SCOPE_KEY, Services
from service.http.problems import ApiProblem

LIMITED_PREFIX = "/v1/"  # /healthz, /readyz, /metrics, docs and the page are never refused
VERSION_HEADER = b"x-model-version"


class ServiceMiddleware:
    """Model snapshot, X-Model-Version, metrics, in-flight limit and body limit."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        # /v1 requests at work are counted on the executor (it batches only when there are
        # several); touched only on the event loop thread
        self.executor = services.executor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method == "HEAD":  # answered as GET (RFC 9110); the server sends the head only
            scope = {**scope, "method": "GET"}
        snapshot = self.services.holder.snapshot
        scope[SNAPSHOT_SCOPE_KEY] = snapshot
        header = (VERSION_HEADER, snapshot.version_label.encode())
        status = 500  # what a request that dies before answering counts as
        start = time.perf_counter()

        limited = scope["path"].startswith(LIMITED_PREFIX)
        working = False  # holds one of the limited in-flight slots

        async def send_with_header(message: Message) -> None:
            nonlocal status, working
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
                if working:  # the work is done: sending it is the transport's (send timeout)
                    working = False
                    self.executor.requests_at_work -= 1
            await send(message)

        metrics = self.services.metrics
        metrics.in_flight.inc()
        try:
            refusal = self._refusal(scope, limited)
            if refusal is not None:
                await refusal.response()(scope, receive, send_with_header)
                return
            working = limited
            self.executor.requests_at_work += limited
            await self.app(scope, self._limit_body(receive, start), send_with_header)
        finally:
            if working:
                self.executor.requests_at_work -= 1
            metrics.in_flight.dec()
            elapsed = time.perf_counter() - start
            metrics.observe_request(_route_label(scope), method, status, elapsed)

    def _refusal(self, scope: Scope, limited: bool) -> ApiProblem | None:
        """503 past the in-flight limit; 413 when Content-Length already exceeds the limit."""
        settings = self.services.settings
        if limited and self.executor.requests_at_work >= settings.max_in_flight:
            return ApiProblem(
                503,
                "overloaded",
                f"{settings.max_in_flight} requests are already in flight; "
                f"retry after {settings.retry_after_s} s",
                title="Too many requests in flight",
                headers={"Retry-After": str(settings.retry_after_s)},
            )
        length = _content_length(scope)
        if length is not None and length > settings.max_body_bytes:
            return body_too_large(settings.max_body_bytes)
        return None

    def _limit_body(self, receive: Receive, start: float) -> Receive:
        """Count body bytes as they arrive (a chunked body has no Content-Length), and give
        the whole body until `start` + the body timeout to arrive."""
        limit, deadlines = self.services.settings.max_body_bytes, self.services.deadlines
        received = 0
        complete = False

        async def receive_limited() -> Message:
            nonlocal received, complete
            if complete:  # later receives wait for a disconnect: no deadline on those
                return await receive()
            message = await deadlines.receive(receive, start)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise body_too_large(limit)
                complete = not message.get("more_body", False)
            return message

        return receive_limited


def body_too_large(limit: int) -> ApiProblem:
    return ApiProblem(
        413,
        "body-too-large",
        f"the request body is larger than {limit} bytes",
        title="Request body too large",
        field="body",
    )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _route_label(scope: Scope) -> str:
    """The matched route's template (bounded cardinality); the page's mount at / is "/"."""
    route = scope.get("route")
    return "unmatched" if route is None else (getattr(route, "path", "") or "/")
