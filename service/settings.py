"""The one validated configuration of a service process (environment variables `VAE_*`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
STATIC_DIR = Path(__file__).resolve().parent / "static"
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
LogFormat = Literal["text", "json"]
# Workers x ORT threads per session beyond this many per core only queue for the cores.
MAX_THREADS_PER_CORE = 2


class Settings(BaseSettings):
    """Every knob of the service; nothing else in `service/` reads the environment."""

    model_config = SettingsConfigDict(env_prefix="VAE_", frozen=True, extra="forbid")

    host: str = Field(default="127.0.0.1", min_length=1, description="Interface to bind.")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port to bind.")
    model_repository: Path | None = Field(
        default=None, description="Repository root; unset or empty: the embedded default model."
    )
    embedded_model_dir: Path = Field(
        default=EMBEDDED_MODEL_DIR, description="The embedded default model (a repository)."
    )
    fallback_to_embedded: bool = Field(
        default=True, description="Serve the embedded model while the repository has none valid."
    )
    poll_interval_s: float = Field(default=2.0, ge=0.01, le=3600, description="Poll period.")
    max_body_bytes: int = Field(default=5 * 2**20, ge=1024, description="Body limit (413).")
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds from a request's start for its whole body to arrive (408): a "
        "client that sends its body slowly, or never finishes it, gives its slot back.",
    )
    max_image_pixels: int = Field(
        default=4096 * 4096, ge=28 * 28, description="Largest width x height decoded (422)."
    )
    max_request_pixels: int = Field(
        default=2 * 4096 * 4096,
        ge=28 * 28,
        description="Most width x height of all the images of one request together, checked "
        "from their headers before any is decoded (422).",
    )
    max_batch: int = Field(default=64, ge=1, le=4096, description="Images or z per request.")
    max_sample_n: int = Field(default=256, ge=1, le=4096, description="Largest n of /v1/sample.")
    max_score_k: int = Field(default=1000, ge=1, le=100_000, description="Largest IWAE k.")
    max_interpolate_steps: int = Field(default=64, ge=2, le=1024, description="Largest steps.")
    max_in_flight: int = Field(default=64, ge=1, description="Concurrent /v1 requests (503).")
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After of that 503.")
    max_connections: int = Field(
        default=512, ge=1, description="Open connections; past it, 503 and the connection closed."
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds for a request's head (request line and headers) to arrive, from "
        "its first byte or the connection's opening (408, connection closed).",
    )
    max_url_bytes: int = Field(default=8192, ge=256, description="Longest URL (414).")
    max_header_bytes: int = Field(
        default=16384, ge=1024, description="Largest request headers, all together (431)."
    )
    send_timeout_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="Seconds a response may wait for a client that takes none of it before the "
        "connection is aborted.",
    )
    max_stalled_bytes: int = Field(
        default=256 * 2**20,
        ge=2**20,
        description="Response bytes that clients are not taking, held in all; past it, the "
        "longest-stalled connections are aborted.",
    )
    ort_intra_op_threads: int = Field(default=1, ge=1, le=256, description="Per ORT session.")
    inference_threads: int = Field(
        default=2, ge=1, le=256, description="Threads for large jobs off the event loop."
    )
    batch_max_size: int = Field(
        default=32,
        ge=0,
        le=4096,
        description="Most requests one model run serves on the inference thread; 0: no "
        "inference thread (small jobs run inline on the event loop).",
    )
    batch_max_delay_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=1000.0,
        description="How long a batch waits for more requests after its first; 0: it takes "
        "only those already queued.",
    )
    graceful_shutdown_s: int = Field(
        default=10, ge=0, description="Seconds shutdown waits for accepted requests."
    )
    static_dir: Path = Field(default=STATIC_DIR, description="The web page, served at /.")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Server processes sharing the port; each loads the model and watches the "
        "repository itself, and a worker that dies is replaced.",
    )
    log_level: LogLevel = "info"
    log_format: LogFormat = Field(
        default="text", description="`text` lines, or `json`: one JSON object per line."
    )
    access_log: bool = Field(
        default=True,
        description="One line per request (request id, method, path, status, duration, model "
        "version); its cost is in docs/benchmarks.md.",
    )

    @classmethod
    def variable_names(cls) -> list[str]:
        """The environment variable of every setting."""
        return [f"VAE_{name.upper()}" for name in cls.model_fields]

    @classmethod
    def unknown_variables(cls) -> list[str]:
        """VAE_* environment variables that name no setting."""
        known = set(cls.variable_names())
        return sorted(name for name in os.environ if name.startswith("VAE_") and name not in known)

    @field_validator("model_repository", mode="before")
    @classmethod
    def _empty_means_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _threads_fit_the_cores(self) -> Settings:
        cores = os.cpu_count() or 1
        threads = self.workers * self.ort_intra_op_threads
        if threads > MAX_THREADS_PER_CORE * cores:
            raise ValueError(
                f"workers ({self.workers}) x ort_intra_op_threads ({self.ort_intra_op_threads}) "
                f"= {threads} threads would queue for {cores} cores; keep it at most "
                f"{MAX_THREADS_PER_CORE * cores}"
            )
        return self

    @model_validator(mode="after")
    def _paths_are_directories(self) -> Settings:
        for name in ("model_repository", "embedded_model_dir"):
            path = getattr(self, name)
            if path is not None and path.exists() and not path.is_dir():
                raise ValueError(f"{name} must be a directory, but {path} is not")
        return self
