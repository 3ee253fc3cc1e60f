"""Connection-level guards that uvicorn's httptools protocol does not have.

httptools (llhttp) sets no limit on the size of a request's head and uvicorn none on its
time; a response the client does not read stays in the socket's buffer as long as the
connection lives; and a pipelined request starts while the previous response still waits
there. Each was an attack that held memory, file descriptors or in-flight slots
(docs/reliability.md). `GuardedHttpToolsProtocol` adds, per process:

- at most `max_connections` open connections: past it, a new connection's request gets a 503
  problem+json with Retry-After, and the connection is closed;
- a request's head must arrive within `header_timeout_s` of its first byte (of the
  connection's opening, for the first request), else 408 and close; the URL at most
  `max_url_bytes` (414), the headers at most `max_header_bytes` (431);
- a response the client does not take is given `send_timeout_s`, then the connection is
  aborted; the next pipelined request waits until the client has taken the previous response;
- such stalled responses hold at most `max_stalled_bytes` in all: past it, the
  longest-stalled connections are aborted.

Each deadline is a timer on the event loop (as uvicorn's keep-alive timeout): one per request
head, from its first byte until it is complete, and one per stalled response.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.http.metrics import Metrics
from service.http.problems import PROBLEM_MEDIA_TYPE, ApiProblem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits every connection of one server process is held to (from Settings)."""

    max_connections: int
    header_timeout_s: float
    max_url_bytes: int
    max_header_bytes: int
    send_timeout_s: float
    max_stalled_bytes: int
    retry_after_s: int


@dataclass(eq=False)
class ConnectionGuard:
    """Shared by all connections of a server: the open ones and the stalled ones."""

    limits: ConnectionLimits
    metrics: Metrics
    open: set[GuardedHttpToolsProtocol] = field(default_factory=set)
    stalled: dict[GuardedHttpToolsProtocol, float] = field(default_factory=dict)  # since

    def opened(self, connection: GuardedHttpToolsProtocol) -> bool:
        """Register a new connection; False when it is one too many."""
        self.open.add(connection)
        self.metrics.connections.set(len(self.open))
        if len(self.open) <= self.limits.max_connections:
            return True
        self.cut("too_many_connections")
        return False

    def closed(self, connection: GuardedHttpToolsProtocol) -> None:
        self.open.discard(connection)
        self.stalled.pop(connection, None)
        self.metrics.connections.set(len(self.open))

    def cut(self, reason: str) -> None:
        """Count a connection refused or closed by a limit."""
        self.metrics.connections_cut.labels(reason=reason).inc()

    def stall(self, connection: GuardedHttpToolsProtocol, now: float) -> None:
        """The connection's transport stopped taking writes: hold the stalled bytes in budget."""
        self.stalled[connection] = now
        held = sum(c.buffered() for c in self.stalled)
        for oldest in sorted(self.stalled, key=self.stalled.__getitem__):
            if held <= self.limits.max_stalled_bytes:
                break
            held -= oldest.buffered()
            oldest.abort("stalled_bytes", "stalled responses over VAE_MAX_STALLED_BYTES")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of `ConnectionGuard` (see the module).
    Its guard is the uvicorn configuration's `guard` attribute (service.main.ServiceConfig
    builds it in each process that serves)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        guard = getattr(self.config, "guard", None)
        assert isinstance(guard, ConnectionGuard), "the uvicorn Config must carry a guard"
        self.guard = guard
        self.url = b""
        self.head_timer: asyncio.TimerHandle | None = None  # while a request head arrives
        self.head_read = 0  # bytes read since it began (the head, and what follows in a read)
        self.header_bytes = 0  # the head's headers, as parsed
        self.send_timer: asyncio.TimerHandle | None = None  # while the client takes nothing
        self._next_waits_for_drain = False
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, WriteSizeTransport(transport)))
        self._head_begins()
        if not self.guard.opened(self):
            limits = self.guard.limits
            detail = (
                f"{limits.max_connections} connections are already open; "
                f"retry after {limits.retry_after_s} s"
            )
            retry = [(b"retry-after", str(limits.retry_after_s).encode())]
            self.app = refusal(503, "too-many-connections", detail, retry)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.closed(self)
        self._head_ends()
        self._taking()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self.head_timer is not None:
            self.head_read += len(data)
        super().data_received(data)
        limits = self.guard.limits
        head_limit = limits.max_url_bytes + limits.max_header_bytes
        if self.head_timer is not None and self.head_read > head_limit:
            # The head is still incomplete and already too large: refuse it without reading on.
            self.refuse(*self._head_problem(len(self.url), self.head_read))
            self.guard.cut("head_too_large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.head_timer is None:
            self._head_begins()

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self.header_bytes += len(name) + len(value) + 4  # ": " and CRLF

    def on_headers_complete(self) -> None:
        url_bytes, header_bytes = len(self.url), self.header_bytes
        self._head_ends()
        limits = self.guard.limits
        if url_bytes <= limits.max_url_bytes and header_bytes <= limits.max_header_bytes:
            super().on_headers_complete()
            return
        self.guard.cut("head_too_large")
        app = self.app  # this one request is answered by the refusal, then the connection closes
        self.app = refusal(*self._head_problem(url_bytes, header_bytes))
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def _head_begins(self) -> None:
        self.head_timer = self.loop.call_later(self.guard.limits.header_timeout_s, self._head_late)

    def _head_ends(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        self.head_timer, self.head_read, self.header_bytes = None, 0, 0

    def _head_late(self) -> None:
        self.head_timer = None
        detail = f"the request head did not arrive within {self.guard.limits.header_timeout_s:g} s"
        self.refuse(408, "header-timeout", detail)
        self.guard.cut("header_timeout")

    def _head_problem(self, url_bytes: int, header_bytes: int) -> tuple[int, str, str]:
        limits = self.guard.limits
        if url_bytes > limits.max_url_bytes:
            return 414, "uri-too-long", f"the URL is longer than {limits.max_url_bytes} bytes"
        detail = f"the request headers are larger than {limits.max_header_bytes} bytes"
        return 431, "header-fields-too-large", detail

    def on_response_complete(self) -> None:
        if self.pipeline and self.flow.write_paused:
            self._next_waits_for_drain = True  # resume_writing starts it
            return
        super().on_response_complete()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._taking()
        self.send_timer = self.loop.call_later(self.guard.limits.send_timeout_s, self._send_late)
        self.guard.stall(self, self.loop.time())

    def resume_writing(self) -> None:
        super().resume_writing()
        self._taking()
        self.guard.stalled.pop(self, None)
        if self._next_waits_for_drain:
            self._next_waits_for_drain = False
            super().on_response_complete()

    def _taking(self) -> None:
        """The client takes the response again (or is gone): no send deadline."""
        if self.send_timer is not None:
            self.send_timer.cancel()
            self.send_timer = None

    def _send_late(self) -> None:
        self.send_timer = None
        self.abort(
            "send_timeout", f"the client took no data for {self.guard.limits.send_timeout_s:g} s"
        )

    def buffered(self) -> int:
        """Response bytes held for the client: the write that filled the buffer (the
        transport keeps that whole object until it is sent, not just what is left of it)."""
        transport = self.transport
        if transport.is_closing():
            return 0
        assert isinstance(transport, WriteSizeTransport)
        return max(transport.last_write_bytes, transport.get_write_buffer_size())

    def abort(self, reason: str, detail: str) -> None:
        """Drop the connection and whatever it still had to send."""
        log.info("%s: connection aborted: %s", _peer(self.client), detail)
        self._head_ends()
        self._taking()
        self.guard.cut(reason)
        self.guard.closed(self)
        self.transport.abort()

    def refuse(self, status: int, slug: str, detail: str) -> None:
        """Answer a problem+json and close, before the request reaches the app (a response
        still being sent on the connection is cut instead)."""
        self._refused = True
        self._head_ends()
        if self.cycle is not None and not self.cycle.response_complete:
            self.abort(slug.replace("-", "_"), detail)
            return
        log.info("%s: %d %s", _peer(self.client), status, detail)
        if not self.transport.is_closing():
            self.transport.write(problem_message(status, slug, detail))
            self.transport.close()


class WriteSizeTransport:
    """A transport that remembers the size of its last write, for `buffered`."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.last_write_bytes = 0

    def write(self, data: bytes) -> None:
        self.last_write_bytes = len(data)
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def problem_message(status: int, slug: str, detail: str) -> bytes:
    """A whole HTTP/1.1 response carrying an RFC 9457 problem, with Connection: close."""
    headers, body = _problem(status, slug, detail)
    head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()
    fields = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return head + fields + b"\r\n" + body


def refusal(
    status: int, slug: str, detail: str, extra: list[tuple[bytes, bytes]] | None = None
) -> Any:
    """An ASGI app that answers every request with this problem and closes the connection."""
    headers, body = _problem(status, slug, detail)
    headers += extra or []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def _problem(status: int, slug: str, detail: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = ApiProblem(status, slug, detail).body()
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    return headers, body


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"
