"""Where a request's model work runs: the inference thread, the event loop, or a worker.

Measured (docs/benchmarks.md, threading model), 28x28 reconstructs on 2 cores: a dedicated
inference thread that micro-batches concurrent requests (service.batcher) gave 1.7x the
throughput of running them inline on the event loop at 16 connections and 1.9x at 64, at
about 0.55x the CPU per request, and added 0.3 ms to p99 at 1 connection. Inline beat both a
threadpool hop and the same thread without batching (0.7-0.8x of inline). So a small
reconstruct or encode (images of at most 64x64 pixels in all, as a raw body or a multipart
body of up to 4 KiB) goes to the inference thread when batching is on (VAE_BATCH_MAX_SIZE >
0); other small work runs inline; anything larger (larger multipart bodies, big images, many
samples, large-k scores, interpolations) runs on the worker threads so the loop stays free.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import anyio
import numpy as np

from service.batcher import MicroBatcher
from service.decoding import OpenedImage
from service.latent import Array
from service.metrics import Metrics
from service.preprocess import (
    ImageOptions,
    input_rows,
    model_inputs,
    stack_or_problem,
)
from service.problems import ApiProblem
from service.runtime import ModelRuntime

T = TypeVar("T")
R = TypeVar("R")

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


@dataclass(frozen=True)
class Pass:
    """What one job's rows gave: x [b, D], mu and logvar [b, L], and z [b, L] and probs [b, D]
    when the job decodes (None when it uses the encoder alone)."""

    x: Array
    mu: Array
    logvar: Array
    z: Array | None
    probs: Array | None


@dataclass(frozen=True)
class ImageInputs:
    """A job's input images (`images()` may parse a multipart body: blocking work) and how
    to preprocess them. Jobs run together have all their images preprocessed in one
    `preprocess.model_inputs` call."""

    images: Callable[[], list[OpenedImage]]
    options: ImageOptions


@dataclass(frozen=True)
class ModelJob(Generic[R]):
    """A request's model work split around the two graphs, so that jobs can share their runs.

    `inputs` gives x [b, D]: images to decode and preprocess, or a function returning x;
    `latent(mu, logvar)` gives the z to decode (`mean_latent` for mu itself, which lets the
    fused graph serve the job), or is None for the encoder alone; `respond(pass)` builds the
    result.
    """

    runtime: ModelRuntime
    inputs: ImageInputs | Callable[[], Array]
    latent: Callable[[Array, Array], Array] | None
    respond: Callable[[Pass], R]


def mean_latent(mu: Array, logvar: Array) -> Array:
    """The latent of a mode=mean reconstruct: mu itself. Jobs that decode with this one are
    served by the fused reconstruct graph (one run) when the model has it."""
    return mu


def run_jobs(jobs: Sequence[ModelJob[R]]) -> list[R | Exception]:
    """Run jobs together: per served model, one fused run when every decoding job decodes mu
    (and the model has the fused graph), else one encoder run and at most one decoder run.

    A job's own failure (a bad image) fails it alone; a graph's failure fails its model's jobs.
    """
    if len(jobs) == 1:  # the common case at low load: skip the grouping
        try:
            return [run_one(jobs[0])]
        except Exception as exc:
            return [exc]
    outcomes: dict[int, R | Exception] = {}
    inputs = _inputs(jobs, outcomes)
    groups: dict[int, list[int]] = {}
    for i in inputs:  # a hot swap can put two models in one batch
        groups.setdefault(id(jobs[i].runtime), []).append(i)
    for members in groups.values():
        try:
            passes = _passes([jobs[i] for i in members], [inputs[i] for i in members])
        except Exception as exc:
            outcomes.update((i, exc) for i in members)
            continue
        for i, one_pass in zip(members, passes, strict=True):
            try:
                outcomes[i] = jobs[i].respond(one_pass)
            except Exception as exc:  # building this response failed: this job alone
                outcomes[i] = exc
    return [outcomes[i] for i in range(len(jobs))]


def run_one(job: ModelJob[R]) -> R:
    """One job alone, as `run_jobs([job])` but without its bookkeeping; its exception is raised."""
    if isinstance(job.inputs, ImageInputs):
        x = input_rows(job.inputs.images(), job.inputs.options)
    else:
        x = job.inputs()
    return job.respond(_passes([job], [x])[0])


def _inputs(jobs: Sequence[ModelJob[R]], failed: dict[int, R | Exception]) -> dict[int, Array]:
    """Each job's x [b, D] by index; a job that fails here gets its exception in `failed`.
    All the jobs' images are preprocessed in one call: its numpy calls cover the batch."""
    inputs: dict[int, Array] = {}
    images: list[tuple[int, list[OpenedImage], ImageOptions]] = []
    for i, job in enumerate(jobs):
        try:
            if isinstance(job.inputs, ImageInputs):
                images.append((i, job.inputs.images(), job.inputs.options))
            else:
                inputs[i] = job.inputs()
        except Exception as exc:
            failed[i] = exc
    try:
        rows = iter(
            model_inputs([(image, options) for _, opened, options in images for image in opened])
        )
    except Exception as exc:  # preprocessing itself failed: every image job hears of it
        failed.update((i, exc) for i, _, _ in images)
        return inputs
    for i, opened, _ in images:
        x = stack_or_problem([next(rows) for _ in opened])
        if isinstance(x, ApiProblem):
            failed[i] = x
        else:
            inputs[i] = x
    return inputs


def _passes(jobs: list[ModelJob[R]], xs: list[Array]) -> list[Pass]:
    """Jobs of one runtime: the fused graph when it serves them all, else the two graphs."""
    runtime = jobs[0].runtime
    decoding = [job.latent for job in jobs if job.latent is not None]
    if runtime.fused is not None and decoding and all(f is mean_latent for f in decoding):
        return _fused_passes(jobs, xs)
    return _two_graph_passes(jobs, xs)


def _fused_passes(jobs: list[ModelJob[R]], xs: list[Array]) -> list[Pass]:
    """One fused run on all the rows: mu, logvar and probs; z = mu for the decoding jobs (the
    encoder-only jobs' probs are dropped, which costs less than a second run)."""
    mu, logvar, probs = jobs[0].runtime.reconstruct_mean(_stack(xs))
    _check_rows("the reconstruct graph", mu, xs)
    return [
        Pass(x, m, lv, None, None) if job.latent is None else Pass(x, m, lv, m, p)
        for job, x, m, lv, p in zip(
            jobs, xs, _split(mu, xs), _split(logvar, xs), _split(probs, xs), strict=True
        )
    ]


def _two_graph_passes(jobs: list[ModelJob[R]], xs: list[Array]) -> list[Pass]:
    """The encoder on all the rows, the decoder on all the z the jobs ask for."""
    runtime = jobs[0].runtime
    mu, logvar = runtime.encode(_stack(xs))
    _check_rows("the encoder", mu, xs)
    mus, logvars = _split(mu, xs), _split(logvar, xs)
    zs = [
        None if job.latent is None else job.latent(m, lv)
        for job, m, lv in zip(jobs, mus, logvars, strict=True)
    ]
    decoded = [z for z in zs if z is not None]
    probs = iter(_split(runtime.decode(_stack(decoded)), decoded) if decoded else [])
    return [
        Pass(x, m, lv, z, None if z is None else next(probs))
        for x, m, lv, z in zip(xs, mus, logvars, zs, strict=True)
    ]


def _check_rows(graph: str, rows: Array, xs: list[Array]) -> None:
    if len(rows) != sum(len(x) for x in xs):
        raise RuntimeError(f"{graph} gave {len(rows)} rows for {sum(len(x) for x in xs)}")


def _stack(parts: list[Array]) -> Array:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _split(rows: Array, like: list[Array]) -> list[Array]:
    """`rows` cut into consecutive pieces as long as each of `like` (plain slices: np.split
    costs more than a batch-1 model run)."""
    if len(like) == 1:
        return [rows]
    pieces, start = [], 0
    for part in like:
        pieces.append(rows[start : start + len(part)])
        start += len(part)
    return pieces


class Executor:
    """Runs jobs on the inference thread, inline, or on `threads` worker threads, timing each
    as inference latency."""

    def __init__(
        self,
        threads: int,
        metrics: Metrics,
        batch_max_size: int = 0,
        batch_max_delay_s: float = 0.0,
    ) -> None:
        self.limiter = anyio.CapacityLimiter(threads)
        self.metrics = metrics
        self.batcher: MicroBatcher[tuple[str, ModelJob[Any]], Any] | None = None
        if batch_max_size > 0:
            self.batcher = MicroBatcher(self._run_batch, batch_max_size, batch_max_delay_s)

    def start(self) -> None:
        """Start the inference thread (the app's lifespan calls this, and `close`)."""
        if self.batcher is not None:
            self.batcher.start()

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    async def run(self, operation: str, cost: Cost, job: Callable[[], T]) -> T:
        if runs_inline(cost):
            return self._timed(operation, job)
        return await anyio.to_thread.run_sync(self._timed, operation, job, limiter=self.limiter)

    async def run_model(self, operation: str, cost: Cost, job: ModelJob[R]) -> R:
        """A small job goes to the inference thread while it runs; otherwise as `run`."""
        if self.batcher is not None and self.batcher.running and runs_inline(cost):
            result: R = await self.batcher.submit((operation, job))
            return result
        return await self.run(operation, cost, partial(run_one, job))

    def _run_batch(self, items: list[tuple[str, ModelJob[Any]]]) -> list[Any]:
        start = time.perf_counter()
        outcomes = run_jobs([job for _, job in items])
        elapsed = time.perf_counter() - start
        for operation, _ in items:  # the time each request's work took, shared or not
            self.metrics.observe_inference(operation, elapsed)
        self.metrics.observe_batch(len(items))
        return outcomes

    def _timed(self, operation: str, job: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return job()
        finally:
            self.metrics.observe_inference(operation, time.perf_counter() - start)
