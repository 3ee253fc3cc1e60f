"""`vae-serve`: validate the settings, then run the app under uvicorn (uvloop + httptools),
as one process or as VAE_WORKERS processes sharing the port.

Workers are uvicorn's own supervisor (uvicorn.supervisors.Multiprocess): the parent binds
the port and starts the workers, each a fresh interpreter that builds the app, loads and
validates the model and watches the repository itself; the parent replaces a worker that
dies or stops answering its health check, and on SIGTERM asks every worker to drain
(VAE_GRACEFUL_SHUTDOWN_S) before it exits. docs/scaling.md has the figures.
"""

from __future__ import annotations

import ctypes
import difflib
import functools
import gc
import os
import signal
import sys
import warnings
from typing import Any

import uvicorn
from PIL import Image
from pydantic import ValidationError
from uvicorn.supervisors import Multiprocess

from service.http import logs
from service.http.app import ServiceApp, create_app
from service.http.transport import ConnectionGuard, ConnectionLimits, GuardedHttpToolsProtocol
from service.model.memory import map_large_buffers
from service.settings import Settings

PR_SET_PDEATHSIG = 1  # prctl's option number in linux/prctl.h
GC_THRESHOLDS = (50_000, 50, 50)  # the defaults are (700, 10, 10): allocations, then sweeps


class ServiceConfig(uvicorn.Config):
    """uvicorn's configuration for this service. Every process that serves (the single one,
    or each worker) calls `load`: the app is built there, then the connection guard, and,
    when `tune` is set (vae-serve; not tests sharing their process), the process is tuned."""

    def __init__(self, settings: Settings, *, tune: bool = False) -> None:
        self.settings = settings
        self.tune = tune
        self.guard: ConnectionGuard | None = None
        super().__init__(
            functools.partial(create_app, settings),  # picklable, for the workers
            factory=True,
            host=settings.host,
            port=settings.port,
            loop="uvloop",
            http=GuardedHttpToolsProtocol,
            lifespan="on",
            workers=settings.workers,
            log_config=None,  # logs.configure, below
            access_log=False,  # the middleware writes its own (VAE_ACCESS_LOG)
            timeout_graceful_shutdown=settings.graceful_shutdown_s,
            server_header=False,
        )

    def configure_logging(self) -> None:
        logs.configure(self.settings.log_level, self.settings.log_format)

    def load(self) -> None:
        super().load()
        app: Any = self.loaded_app
        while not isinstance(app, ServiceApp):  # inside uvicorn's own middleware
            app = app.app
        self.guard = ConnectionGuard(connection_limits(self.settings), app.services.metrics)
        if self.workers > 1:
            end_with_parent()
        if self.tune:
            tune_process()


class Workers(Multiprocess):
    """uvicorn's supervisor, which closes its copy of the listening socket before it asks
    the workers to drain: new connections are then refused at once, as with one process,
    instead of queueing for workers that no longer accept them."""

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()


def server_config(settings: Settings, *, tune: bool = False) -> ServiceConfig:
    """The uvicorn configuration `vae-serve` runs (tests run the same one)."""
    return ServiceConfig(settings, tune=tune)


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


def end_with_parent() -> None:
    """A worker is sent SIGTERM (and drains) when its supervisor dies, even by SIGKILL (an
    out-of-memory kill, say): otherwise it would keep serving, orphaned, holding the port.
    Linux's prctl(PR_SET_PDEATHSIG); elsewhere nothing."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # no prctl: not Linux
        return
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def tune_process() -> None:
    """Once the app is built: the garbage collector and the allocator, in every worker."""
    # The service checks width x height against VAE_MAX_IMAGE_PIXELS before decoding, and
    # answers 422; PIL's own warning for the same thing would only add noise to the log.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    # Everything imported and built so far lives as long as the process: move it out of the
    # cyclic collector's reach, or each full collection walks it all (~45 ms here, which was
    # the whole p99 of a reconstruct at 16 connections). Requests make little cyclic garbage,
    # so the collector also runs less often: together -10% CPU per request, p99 47 -> 13 ms
    # (docs/benchmarks.md, garbage collector).
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    map_large_buffers()  # large answers and images give their memory back when freed


def load_settings() -> Settings:
    """Settings from the environment; invalid ones end the process with a clear message. A
    VAE_* variable that names no setting is warned about, with the setting it may have meant:
    a typo would otherwise be ignored in silence (it is not an error: the same shell may hold
    the training job's and Compose's VAE_* variables)."""
    for name in Settings.unknown_variables():
        near = difflib.get_close_matches(name, Settings.variable_names(), n=1)
        hint = f"; did you mean {near[0]}?" if near else " (docs/api.md lists them)"
        print(f"vae-serve: warning: {name} is not a setting, ignored{hint}", file=sys.stderr)
    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"  VAE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            if e["loc"]
            else f"  {e['msg']}"
            for e in exc.errors(include_url=False)
        ]
        sys.exit("vae-serve: invalid settings:\n" + "\n".join(lines))


def main() -> None:
    """Entry point of the `vae-serve` console script."""
    config = server_config(load_settings(), tune=True)
    server = uvicorn.Server(config)
    if config.workers > 1:
        Workers(config, sockets=[config.bind_socket()]).run()
    else:
        server.run()


if __name__ == "__main__":
    main()
