"""Where a request's model work runs: inline on the event loop, or in a worker thread.

Measured (DESIGN.md, runtime rules): a 28x28 PNG reconstruct costs ~125 us of codec + model,
and running it inline in `async def` gave 1.7x the throughput of a threadpool hop. Work that
is bounded that small runs inline; anything larger (multipart batches, big images, many
samples, large-k scores, interpolations) runs in a worker thread so the loop stays free.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio

from service.metrics import Metrics

T = TypeVar("T")

# Decoding and preprocessing up to 64x64 source pixels costs about as much as the model on
# a few rows; together they stay within ~0.3 ms, the bound on how long the loop may stall.
INLINE_MAX_PIXELS = 64 * 64
INLINE_MAX_ROWS = 8  # rows through the encoder and decoder (batch 1 reconstruct is 2)


@dataclass(frozen=True)
class Cost:
    """A request's work: source image pixels (None = not known until parsed) and model rows."""

    pixels: int | None
    rows: int


def runs_inline(cost: Cost) -> bool:
    """True when the work is small and bounded enough to run on the event loop itself."""
    return (
        cost.pixels is not None
        and cost.pixels <= INLINE_MAX_PIXELS
        and (cost.rows <= INLINE_MAX_ROWS)
    )


class Executor:
    """Runs jobs inline or on `threads` worker threads, timing each as inference latency."""

    def __init__(self, threads: int, metrics: Metrics) -> None:
        self.limiter = anyio.CapacityLimiter(threads)
        self.metrics = metrics

    async def run(self, operation: str, cost: Cost, job: Callable[[], T]) -> T:
        if runs_inline(cost):
            return self._timed(operation, job)
        return await anyio.to_thread.run_sync(self._timed, operation, job, limiter=self.limiter)

    def _timed(self, operation: str, job: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return job()
        finally:
            self.metrics.observe_inference(operation, time.perf_counter() - start)
