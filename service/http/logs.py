"""Logging: text lines or one JSON object per line (VAE_LOG_FORMAT), and the access log.

Every line written while a request is served carries its request id (a context variable the
middleware sets), so a JSON line of an error can be matched to its access line. The access
log is the middleware's own, not uvicorn's: it knows the request id, the model version and
the duration, and it costs less (docs/benchmarks.md, access log).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

from service.settings import LogFormat, LogLevel

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "vae_request_id", default=None
)
ACCESS = logging.getLogger("vae.access")
ACCESS_FIELDS = ("method", "path", "status", "duration_ms", "model_version", "served_by")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the request id, and the
    access fields when the record has them."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update((f, getattr(record, f)) for f in ACCESS_FIELDS if hasattr(record, f))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{seconds}.{int(record.msecs):03d}Z"


def configure(level: LogLevel, log_format: LogFormat) -> None:
    """Root logging for the process: uvicorn's loggers propagate to it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    uvicorn_access = logging.getLogger("uvicorn.access")  # replaced by ours (`access`)
    uvicorn_access.handlers[:] = []
    uvicorn_access.propagate = False


def access(
    request_id: str,
    method: str,
    path: str,
    status: int,
    seconds: float,
    model_version: str,
    served_by: str,
) -> None:
    """One access line (at info: VAE_LOG_LEVEL=warning silences it, as VAE_ACCESS_LOG=false)."""
    duration_ms = round(seconds * 1000, 2)
    ACCESS.info(
        '%s "%s %s" %d %.2f ms model=%s',
        request_id,
        method,
        path,
        status,
        duration_ms,
        model_version,
        extra={
            "request_id": request_id,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "model_version": model_version,
            "served_by": served_by,
        },
    )
