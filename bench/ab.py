"""In-process A/B timing of two forms of the same code (bench/idioms.py): alternated, medians.

A `Case` pairs the idiom (the faster form, kept in service/ or reverted) with the plain form
it departs from, each written so that only the idiom differs; `measure` first checks that
both give the same result, then times them: `repeats` times each runs for about `sample_ms`
(as many calls as fit), the order swapped every repeat so that the machine's drift hits both
alike. A call's time is its sample's mean; the saving is the median of the paired
differences.
"""

from __future__ import annotations

import gc
import io
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

Sampler = Callable[[Callable[[], Any], int], float]  # (fn, calls) -> us per call


@dataclass(frozen=True)
class Case:
    """An idiom, the plain form, and how often a request runs it."""

    idiom: str
    where: str  # the module and function in service/
    fast: Callable[[], Any]  # the idiom
    plain: Callable[[], Any]
    per_request: float  # calls per 28x28 PNG reconstruct at batch 1
    same: Callable[[Any, Any], bool] | None = None  # None: nothing to compare (side effects)
    calls: int = 1  # the idiom's calls per call of `fast` or `plain` (a batch: per image)


def equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def close(a: Any, b: Any) -> bool:
    """Arrays from two model paths: equal within float32 rounding."""
    return all(np.allclose(x, y, atol=1e-5) for x, y in zip(a, b, strict=True))


def same_pixels(a: bytes, b: bytes) -> bool:
    """Two image files decode to the same pixels."""
    return equal(*(np.asarray(Image.open(io.BytesIO(data))) for data in (a, b)))


def sample_us(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


async def sample_us_async(fn: Callable[[], Awaitable[Any]], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        await fn()
    return (time.perf_counter() - start) / calls * 1e6


def alternate(case: Case, sampler: Sampler, repeats: int, sample_ms: float) -> list[float]:
    """[idiom us, plain us, saved us] per call (see the module)."""
    sampler(case.plain, 20)
    calls = max(1, round(sample_ms * 1000 / max(sampler(case.fast, 20), 0.01)))
    fast: list[float] = []
    plain: list[float] = []
    for r in range(repeats):
        for fn, out in ((case.fast, fast), (case.plain, plain))[:: 1 if r % 2 else -1]:
            out.append(sampler(fn, calls) / case.calls)
    saved = [p - f for f, p in zip(fast, plain, strict=True)]
    return [statistics.median(fast), statistics.median(plain), statistics.median(saved)]


HEADER = (
    "| idiom | where | idiom us | plain us | saves us/call | per request | saves us/request |\n"
    "| --- | --- | --- | --- | --- | --- | --- |"
)


def measure(
    cases: list[Case],
    result: Callable[[Callable[[], Any]], Any],
    sampler: Sampler,
    repeats: int,
    sample_ms: float,
) -> None:
    """Check each case's two forms agree (`result` calls one), time them (`sampler`) and
    print the case's row."""
    for case in cases:
        if case.same is not None and not case.same(result(case.fast), result(case.plain)):
            raise SystemExit(f"{case.idiom}: the plain form gives another result")
        gc.collect()
        gc.disable()  # as timeit: a collection in one sample and not the other is noise here
        try:
            fast, plain, saved = alternate(case, sampler, repeats, sample_ms)
        finally:
            gc.enable()
        print(
            f"| {case.idiom} | {case.where} | {fast:.2f} | {plain:.2f} | {saved:+.2f} "
            f"| {case.per_request:g} | {saved * case.per_request:+.2f} |",
            flush=True,
        )
