"""Prometheus metrics, one registry per app (so several apps in one process stay apart)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from service.model.watcher import RefreshResult

# Small requests take ~100 us; batches, n=256 samples and large-k scores take up to seconds.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Request, inference and model-reload metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._http(self.registry)
        self._inference(self.registry)
        self._model(self.registry)

    def _http(self, r: CollectorRegistry) -> None:
        labels = ["route", "method", "status"]
        self.requests = Counter(
            "vae_http_requests", "HTTP requests by route, method and status.", labels, registry=r
        )
        self.request_seconds = Histogram(
            "vae_http_request_duration_seconds",
            "HTTP request latency (whole response).",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "vae_http_requests_in_flight", "HTTP requests being served now.", registry=r
        )
        self.instance = Gauge(
            "vae_instance_info",
            "Which replica and process this is (value 1).",
            ["served_by"],
            registry=r,
        )
        self.connections = Gauge(
            "vae_http_connections", "Open client connections (VAE_MAX_CONNECTIONS).", registry=r
        )
        self.connections_cut = Counter(
            "vae_http_connections_cut",
            "Connections refused or closed by a connection limit, by the limit.",
            ["reason"],
            registry=r,
        )

    def _inference(self, r: CollectorRegistry) -> None:
        self.inference_seconds = Histogram(
            "vae_inference_duration_seconds",
            "Model work per request: decode, infer, encode.",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "vae_inference_batch_size",
            "Requests served by one run of the inference thread (micro-batching).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )

    def _model(self, r: CollectorRegistry) -> None:
        self.model_info = Gauge(
            "vae_model_info", "The served model (value 1).", ["version", "source"], registry=r
        )
        self.model_ready = Gauge("vae_model_ready", "1 while a validated model serves.", registry=r)
        self.reloads = Counter(
            "vae_model_reloads",
            "Model versions validated and swapped in (success) or rejected (failure).",
            ["result"],
            registry=r,
        )
        for result in ("success", "failure"):
            self.reloads.labels(result=result)
        self.withdrawals = Counter(
            "vae_model_withdrawals",
            "Served model versions withdrawn because a run gave a non-finite output.",
            registry=r,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        labels = (route, method, str(status))
        self._child(self.requests, labels).inc()
        self._child(self.request_seconds, labels).observe(seconds)

    def observe_inference(self, operation: str, seconds: float) -> None:
        self._child(self.inference_seconds, (operation,)).observe(seconds)

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        """`metric.labels(*labels)`, looked up once: labels() takes a lock and builds its key
        on every call, ~2 us per request in observe_inference and ~5 in observe_request
        (docs/benchmarks.md). For metrics whose children are never removed (clear() would
        leave stale ones here)."""
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[metric, labels] = metric.labels(*labels)
        return child

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def record_refresh(self, result: RefreshResult) -> None:
        """Count swaps, rejections and withdrawals; point the model-info gauge at the served
        model."""
        serving = result.snapshot.runtime
        self.reloads.labels(result="failure").inc(len(result.rejections))
        self.withdrawals.inc(len(result.withdrawn))
        if result.loaded is not None:
            self.reloads.labels(result="success").inc()
        self.model_info.clear()
        if serving is not None:
            self.model_info.labels(version=str(serving.version), source=serving.source).set(1)
        self.model_ready.set(0 if serving is None else 1)

    def exposition(self) -> bytes:
        """The Prometheus text format of everything above."""
        return generate_latest(self.registry)
