"""multipart/form-data parsed in memory (the container's root filesystem is read-only).

Starlette's parser spools files over 1 MiB to a temporary file; the body here is already
bounded by `VAE_MAX_BODY_BYTES`, so every part simply stays in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart.multipart import MultipartParser, parse_options_header

from service.http.problems import invalid

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks


@dataclass
class Part:
    """One part of the form: its field name, optional file name and raw bytes."""

    name: str = ""
    filename: str | None = None
    content_type: str | None = None
    data: bytearray = field(default_factory=bytearray)


class _Collector:
    """python-multipart callbacks that gather parts, refusing more than `max_parts`."""

    def __init__(self, max_parts: int) -> None:
        self.max_parts = max_parts
        self.parts: list[Part] = []
        self.ended = False
        self._header_field = bytearray()
        self._header_value = bytearray()

    def on_part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise invalid("body", f"at most {self.max_parts} form parts", code="too_many_parts")
        self.parts.append(Part())

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.parts[-1].data += data[start:end]

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        name = bytes(self._header_field).decode("latin-1").strip().lower()
        value = bytes(self._header_value)
        part = self.parts[-1]
        if name == "content-disposition":
            _, options = parse_options_header(value)
            part.name = options.get(b"name", b"").decode("utf-8", "replace")
            filename = options.get(b"filename")
            part.filename = None if filename is None else filename.decode("utf-8", "replace")
        elif name == "content-type":
            part.content_type = value.decode("latin-1").strip()
        self._header_field.clear()
        self._header_value.clear()

    def on_end(self) -> None:
        self.ended = True


def parse_multipart(body: bytes, content_type: str, max_parts: int) -> list[Part]:
    """Every part of a complete multipart/form-data body; a malformed body is a 422."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise invalid("header.content-type", "multipart/form-data needs a boundary parameter")
    collector = _Collector(max_parts)
    try:
        parser = MultipartParser(boundary, _callbacks(collector))
        parser.write(_without_preamble(body, boundary))
        parser.finalize()
    except ValueError as exc:  # FormParserError and bad boundaries are ValueErrors
        raise invalid(
            "body", f"malformed multipart/form-data: {exc}", code="bad_multipart"
        ) from exc
    if not collector.ended:
        raise invalid(
            "body", "malformed multipart/form-data: no closing boundary", code="bad_multipart"
        )
    return collector.parts


def _without_preamble(body: bytes, boundary: bytes) -> bytes:
    """The body from its first delimiter on: RFC 2046 lets text precede it (the preamble),
    which the parser does not skip. A body without a delimiter is left for it to refuse."""
    if body.startswith(b"--" + boundary):
        return body
    start = body.find(b"\r\n--" + boundary)
    return body if start < 0 else body[start + 2 :]


def _callbacks(c: _Collector) -> MultipartCallbacks:
    return {
        "on_part_begin": c.on_part_begin,
        "on_part_data": c.on_part_data,
        "on_header_field": c.on_header_field,
        "on_header_value": c.on_header_value,
        "on_header_end": c.on_header_end,
        "on_end": c.on_end,
    }
