"""A request's model work on images, as data, and running several requests' work together.

A `Job` says what it runs in fields: its inputs (`source`: images and how to preprocess
them, `options`, or model input rows as they are, `Rows`), which latent code it takes (`z`:
the mean, a draw from q(z|x) seeded by the request, or none), whether it decodes that code
(`decode`), and `finish`, which turns the arrays into the request's response on whichever
thread ran the job (the PNG or JSON is built there, not on the loop).

`run_jobs` serves jobs together with as few model runs as it can: per served model, one run
of the fused reconstruct graph when every job that decodes decodes the mean, else one encoder
run on all the rows and one decoder run on all the z asked for. Shapes: B rows, D pixels,
L latent dimensions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

import numpy as np

from service.images.decoding import OpenedImage
from service.images.errors import ImageError
from service.images.preprocess import ImageOptions, model_inputs, stack_rows
from service.model.latent import Array, reparameterize
from service.model.runtime import ModelRuntime

R = TypeVar("R")


@dataclass(frozen=True)
class Draw:
    """z = mu + exp(logvar / 2) * eps, eps from a generator seeded by `seed` (Kingma &
    Welling 2013, eq. 10)."""

    seed: int


# The latent code a job takes: "mean" is mu itself (the fused graph can decode it); None,
# no code (the job reports mu and logvar only).
Latent = Literal["mean"] | Draw | None


class ImageSource(Protocol):
    """A request's images: counted and sized from their headers when the event loop could
    read them (else None), and read in full by `images()` (blocking work)."""

    @property
    def count(self) -> int | None: ...

    @property
    def pixels(self) -> int | None: ...

    def images(self) -> Sequence[OpenedImage]: ...


@dataclass(frozen=True)
class Rows:
    """Model input rows given as they are (the Open Inference Protocol's x): [B, D]."""

    x: Array

    @property
    def count(self) -> int:
        return len(self.x)

    @property
    def pixels(self) -> int:
        return 0  # no image to decode


@dataclass(frozen=True)
class Result:
    """What a job's rows gave: x [B, D], mu and logvar [B, L]; z [B, L] when the job takes
    a latent code, and probs [B, D] when it decodes it (else None)."""

    x: Array
    mu: Array
    logvar: Array
    z: Array | None
    probs: Array | None


@dataclass(frozen=True)
class Job(Generic[R]):
    """One request's model work on images (see the module)."""

    runtime: ModelRuntime
    source: ImageSource | Rows
    options: ImageOptions | None  # how to preprocess images (None for Rows)
    z: Latent
    decode: bool
    finish: Callable[[Result], R]

    def __post_init__(self) -> None:
        if self.decode and self.z is None:
            raise ValueError("a job that decodes needs a latent code")

    @property
    def graph_rows(self) -> int | None:
        """Rows through the graphs: every image through the encoder, and through the decoder
        too when the job decodes (None until the images are counted)."""
        count = self.source.count
        return None if count is None else count * (2 if self.decode else 1)


def run_jobs(jobs: Sequence[Job[R]]) -> list[R | Exception]:
    """Each job's response, or the exception that failed it: a job's own failure (a bad
    image) fails it alone; a graph's failure fails the jobs of its model."""
    outcomes: dict[int, R | Exception] = {}
    xs = _inputs(jobs, outcomes)
    groups: dict[int, list[int]] = {}
    for i in sorted(xs):  # a hot swap can put two models in one batch
        groups.setdefault(id(jobs[i].runtime), []).append(i)
    for members in groups.values():
        try:
            results = _run_graphs([jobs[i] for i in members], [xs[i] for i in members])
        except Exception as exc:
            outcomes.update((i, exc) for i in members)
            continue
        for i, result in zip(members, results, strict=True):
            try:
                outcomes[i] = jobs[i].finish(result)
            except Exception as exc:  # building this response failed: this job alone
                outcomes[i] = exc
    return [outcomes[i] for i in range(len(jobs))]


def _inputs(jobs: Sequence[Job[R]], failed: dict[int, R | Exception]) -> dict[int, Array]:
    """Each job's x [B, D] by index; a job that fails here gets its exception in `failed`.
    All the jobs' images are preprocessed in one `model_inputs` call (its numpy calls cover
    the batch)."""
    read: list[tuple[int, Sequence[OpenedImage], ImageOptions]] = []
    xs: dict[int, Array] = {}
    for i, job in enumerate(jobs):
        if isinstance(job.source, Rows):
            xs[i] = job.source.x
            continue
        try:
            assert job.options is not None, "a job of images needs its preprocessing options"
            read.append((i, job.source.images(), job.options))
        except Exception as exc:
            failed[i] = exc
    try:
        rows = iter(
            model_inputs([(image, options) for _, images, options in read for image in images])
        )
    except Exception as exc:  # preprocessing itself failed: every job of images hears of it
        failed.update((i, exc) for i, _, _ in read)
        return xs
    for i, images, _ in read:
        x = stack_rows([next(rows) for _ in images])
        if isinstance(x, ImageError):
            failed[i] = x
        else:
            xs[i] = x
    return xs


def _run_graphs(jobs: list[Job[R]], xs: list[Array]) -> list[Result]:
    """Jobs of one runtime: the fused graph when it serves them all, else the two graphs."""
    decoded = [job.z for job in jobs if job.decode]
    if jobs[0].runtime.fused is not None and decoded and all(z == "mean" for z in decoded):
        return _fused(jobs, xs)
    return _encoder_then_decoder(jobs, xs)


def _fused(jobs: list[Job[R]], xs: list[Array]) -> list[Result]:
    """One fused run on all the rows: mu, logvar and the probs of decoding mu. The jobs
    that do not decode drop their probs (cheaper than a second run) and draw their z, if
    any, from mu and logvar."""
    mu, logvar, probs = jobs[0].runtime.reconstruct_mean(np.concatenate(xs))
    _check_rows("the reconstruct graph", mu, xs)
    return [
        Result(x, m, lv, m, p) if job.decode else Result(x, m, lv, _code(job.z, m, lv), None)
        for job, x, m, lv, p in zip(
            jobs, xs, _split(mu, xs), _split(logvar, xs), _split(probs, xs), strict=True
        )
    ]


def _encoder_then_decoder(jobs: list[Job[R]], xs: list[Array]) -> list[Result]:
    """The encoder on all the rows, the decoder on all the z the jobs ask for."""
    runtime = jobs[0].runtime
    mu, logvar = runtime.encode(np.concatenate(xs))
    _check_rows("the encoder", mu, xs)
    mus, logvars = _split(mu, xs), _split(logvar, xs)
    zs = [_code(job.z, m, lv) for job, m, lv in zip(jobs, mus, logvars, strict=True)]
    decoded = [z for job, z in zip(jobs, zs, strict=True) if job.decode and z is not None]
    probs = iter(_split(runtime.decode(np.concatenate(decoded)), decoded) if decoded else [])
    return [
        Result(x, m, lv, z, next(probs) if job.decode else None)
        for job, x, m, lv, z in zip(jobs, xs, mus, logvars, zs, strict=True)
    ]


def _code(z: Latent, mu: Array, logvar: Array) -> Array | None:
    """The latent code [B, L] a job takes, from its mu and logvar."""
    if isinstance(z, Draw):
        return reparameterize(mu, logvar, np.random.default_rng(z.seed))
    return mu if z == "mean" else None


def _check_rows(graph: str, rows: Array, xs: list[Array]) -> None:
    if len(rows) != sum(len(x) for x in xs):
        raise RuntimeError(f"{graph} gave {len(rows)} rows for {sum(len(x) for x in xs)}")


def _split(rows: Array, like: list[Array]) -> list[Array]:
    """`rows` cut into consecutive pieces as long as each of `like` (plain slices: np.split
    costs more than a batch-1 model run)."""
    pieces, start = [], 0
    for part in like:
        pieces.append(rows[start : start + len(part)])
        start += len(part)
    return pieces
