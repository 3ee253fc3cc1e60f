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

import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http import logs
from service.http.deps import SNAPSHOT_SCOPE_KEY, Services
from service.http.problems import ApiProblem, answer
from service.inference.executor import Executor

# Model work: /v1 and the v2 infer operations. /healthz, /readyz, /metrics, metadata, docs
# and the page are never refused.
LIMITED_PREFIX = "/v1/"
INFER_SUFFIX = "/infer"
VERSION_HEADER = b"x-model-version"
REQUEST_ID_HEADER = b"x-request-id"
SERVED_BY_HEADER = b"x-served-by"
# A request id a client or balancer sends is kept when it is this (a UUID, a trace id, ...);
# anything else is replaced, so that no header or log line carries what a client made up.
REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+=/-]{1,128}")


class ServiceMiddleware:
    """Model snapshot, X-Model-Version, metrics, in-flight limit and body limit."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        # Requests at work are counted on the executor (it batches only when there are
        # several); touched only on the event loop thread.
        self.executor = services.executor
        self.fixed_headers = [(SERVED_BY_HEADER, services.served_by.encode())]
        self.access_log = services.settings.access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method == "HEAD":  # answered as GET (RFC 9110); the server sends the head only
            scope = {**scope, "method": "GET"}
        snapshot = self.services.holder.snapshot
        scope[SNAPSHOT_SCOPE_KEY] = snapshot
        version, request_id = snapshot.version_label, request_id_of(scope["headers"])
        token = logs.REQUEST_ID.set(request_id)
        exchange = Exchange(send, [*self.fixed_headers, (VERSION_HEADER, version.encode())])
        exchange.headers.append((REQUEST_ID_HEADER, request_id.encode()))
        start = time.perf_counter()
        metrics = self.services.metrics
        metrics.in_flight.inc()
        try:
            await self._serve(scope, receive, exchange, start)
        finally:
            exchange.release()
            metrics.in_flight.dec()
            elapsed = time.perf_counter() - start
            metrics.observe_request(_route_label(scope), method, exchange.status, elapsed)
            if self.access_log:
                served_by, path = self.services.served_by, scope["path"]
                logs.access(request_id, method, path, exchange.status, elapsed, version, served_by)
            logs.REQUEST_ID.reset(token)

    async def _serve(
        self, scope: Scope, receive: Receive, exchange: Exchange, start: float
    ) -> None:
        path = scope["path"]
        limited = path.startswith(LIMITED_PREFIX) or path.endswith(INFER_SUFFIX)
        refusal = self._refusal(scope, limited)
        if refusal is not None:
            await answer(path, refusal)(scope, receive, exchange.send)
            return
        if limited:
            exchange.hold(self.executor)
        await self.app(scope, self._limit_body(receive, start), exchange.send)

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


class Exchange:
    """One request as the middleware follows it: the status it answered (500 until it
    answers), the headers added to its response, and its in-flight slot, which it gives back
    when its response starts (the work is done; sending is the transport's, and the send
    timeout bounds it)."""

    def __init__(self, send: Send, headers: list[tuple[bytes, bytes]]) -> None:
        self.downstream = send
        self.headers = headers
        self.status = 500
        self.executor: Executor | None = None  # holding a slot of its requests at work

    def hold(self, executor: Executor) -> None:
        executor.requests_at_work += 1
        self.executor = executor

    def release(self) -> None:
        if self.executor is not None:
            self.executor.requests_at_work -= 1
            self.executor = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            message["headers"] = [*message.get("headers", ()), *self.headers]
            self.release()
        await self.downstream(message)


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


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's X-Request-ID when it is well formed, else a new random one."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER and REQUEST_ID.fullmatch(value):
            return value.decode()
    return secrets.token_hex(16)


def _route_label(scope: Scope) -> str:
    """The matched route's template (bounded cardinality); the page's mount at / is "/"."""
    route = scope.get("route")
    return "unmatched" if route is None else (getattr(route, "path", "") or "/")
