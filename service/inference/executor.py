"""Where a request's model work runs: on the event loop, on the inference thread, or on a
worker thread.

Measured (docs/benchmarks.md, threading model), 28x28 reconstructs on 2 cores: a dedicated
inference thread that micro-batches concurrent requests (service.inference.batcher) gave 1.7x
the throughput of running them inline on the event loop at 16 connections and 1.9x at 64, at
about 0.55x the CPU per request; but a lone request pays the hop to that thread, about as
much as its work. So:

- small work (images of at most INLINE_MAX_PIXELS in all, at most INLINE_MAX_ROWS rows
  through the graphs) is short enough for the event loop: a job of it runs there when it is
  the only /v1 request at work and the inference thread is idle, and goes to the inference
  thread to be batched when other requests are at work; other small work runs inline;
- anything larger, or whose size is not known until its images are read (large multipart
  bodies, files that are not plain PNGs, many samples, large-k scores), runs on the worker
  threads, so the loop stays free.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import anyio

from service.inference.batcher import MicroBatcher
from service.inference.jobs import Job, run_jobs

T = TypeVar("T")
R = TypeVar("R")
Placement = Literal["inline", "batch", "thread"]

# Decoding and preprocessing up to 64x64 source pixels costs about as much as the model on
# a few rows; together they stay within ~0.3 ms, the bound on how long the loop may stall.
INLINE_MAX_PIXELS = 64 * 64
INLINE_MAX_ROWS = 8  # rows through the encoder and decoder (a one-image reconstruct is 2)


@dataclass(frozen=True)
class Work:
    """The size of a request's model work: source image pixels (None: not known until its
    images are read, off the loop) and rows through the graphs."""

    pixels: int | None
    rows: int | None


def fits_event_loop(work: Work) -> bool:
    """True when the work is small and bounded enough to run on the event loop itself."""
    return (
        work.pixels is not None
        and work.pixels <= INLINE_MAX_PIXELS
        and work.rows is not None
        and work.rows <= INLINE_MAX_ROWS
    )


class InferenceObserver(Protocol):
    """Where the executor reports timings (the service's Prometheus metrics)."""

    def observe_inference(self, operation: str, seconds: float) -> None: ...

    def observe_batch(self, size: int) -> None: ...


class Executor:
    """Runs work inline, on the inference thread (micro-batched), or on `threads` worker
    threads, timing each as inference latency."""

    def __init__(
        self,
        threads: int,
        observer: InferenceObserver,
        batch_max_size: int = 0,
        batch_max_delay_s: float = 0.0,
    ) -> None:
        self.limiter = anyio.CapacityLimiter(threads)
        self.observer = observer
        self.requests_at_work = 0  # /v1 requests between arrival and response (the middleware)
        self.batcher: MicroBatcher[tuple[str, Job[Any]], Any] | None = None
        if batch_max_size > 0:
            self.batcher = MicroBatcher(self._run_batch, batch_max_size, batch_max_delay_s)

    def start(self) -> None:
        """Start the inference thread (the app's lifespan calls this, and `close`)."""
        if self.batcher is not None:
            self.batcher.start()

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    async def run_job(self, operation: str, job: Job[R]) -> R:
        """The job's response, from where `placement` says it runs."""
        where = await self.placement(Work(job.source.pixels, job.graph_rows))
        if where == "batch":
            assert self.batcher is not None
            result: R = await self.batcher.submit((operation, job))
            return result
        return await self._run(where, operation, lambda: _one(job))

    async def run(self, operation: str, work: Work, compute: Callable[[], T]) -> T:
        """`compute()`, inline when `work` fits the event loop, else on a worker thread."""
        return await self._run("inline" if fits_event_loop(work) else "thread", operation, compute)

    async def placement(self, work: Work) -> Placement:
        """Where a job of this size runs. Before deciding, a small job yields once to the
        loop, so that requests that arrived with it have started and are counted."""
        if not fits_event_loop(work):
            return "thread"
        if self.batcher is None or not self.batcher.running:
            return "inline"
        await asyncio.sleep(0)
        alone = self.requests_at_work <= 1 and self.batcher.pending == 0
        return "inline" if alone else "batch"

    async def _run(self, where: Placement, operation: str, compute: Callable[[], T]) -> T:
        if where == "inline":
            return self._timed(operation, compute)
        return await anyio.to_thread.run_sync(self._timed, operation, compute, limiter=self.limiter)

    def _run_batch(self, items: list[tuple[str, Job[Any]]]) -> Sequence[Any]:
        start = time.perf_counter()
        outcomes = run_jobs([job for _, job in items])
        elapsed = time.perf_counter() - start
        for operation, _ in items:  # the time each request's work took, shared or not
            self.observer.observe_inference(operation, elapsed)
        self.observer.observe_batch(len(items))
        return outcomes

    def _timed(self, operation: str, compute: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return compute()
        finally:
            self.observer.observe_inference(operation, time.perf_counter() - start)


def _one(job: Job[R]) -> R:
    """A job run alone; its exception is raised."""
    outcome = run_jobs([job])[0]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome
