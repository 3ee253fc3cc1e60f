"""`vae-serve`: validate the settings, then run the app under uvicorn (uvloop + httptools)."""

from __future__ import annotations

import gc
import logging
import sys
import warnings

import uvicorn
from PIL import Image
from pydantic import ValidationError

from service.http.app import create_app
from service.http.transport import ConnectionGuard, ConnectionLimits, protocol_class
from service.model.memory import map_large_buffers
from service.settings import Settings

GC_THRESHOLDS = (50_000, 50, 50)  # the defaults are (700, 10, 10): allocations, then sweeps


def server_config(settings: Settings) -> uvicorn.Config:
    """The uvicorn configuration `vae-serve` runs (tests run the same one)."""
    app = create_app(settings)
    guard = ConnectionGuard(connection_limits(settings), app.services.metrics)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=protocol_class(guard),
        lifespan="on",
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
        server_header=False,
    )


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        max_connections=settings.max_connections,
        header_timeout_s=settings.header_timeout_s,
        max_url_bytes=settings.max_url_bytes,
        max_header_bytes=settings.max_header_bytes,
        send_timeout_s=settings.send_timeout_s,
        max_stalled_bytes=settings.max_stalled_bytes,
        retry_after_s=settings.retry_after_s,
    )


def load_settings() -> Settings:
    """Settings from the environment; invalid ones end the process with a clear message."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"  VAE_{'_'.join(str(p) for p in e['loc']).upper() or '?'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        ]
        sys.exit("vae-serve: invalid settings:\n" + "\n".join(lines))


def main() -> None:
    """Entry point of the `vae-serve` console script."""
    settings = load_settings()
    # The service checks width x height against VAE_MAX_IMAGE_PIXELS before decoding, and
    # answers 422; PIL's own warning for the same thing would only add noise to the log.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = server_config(settings)
    # Everything imported and built so far lives as long as the process: move it out of the
    # cyclic collector's reach, or each full collection walks it all (~45 ms here, which was
    # the whole p99 of a reconstruct at 16 connections). Requests make little cyclic garbage,
    # so the collector also runs less often: together -10% CPU per request, p99 47 -> 13 ms
    # (docs/benchmarks.md, garbage collector).
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    map_large_buffers()  # large answers and images give their memory back when freed
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
