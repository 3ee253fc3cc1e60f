"""What each speed idiom in service/ saves: the idiom against the plain form it departs from,
in one process, called alternately (bench/ab.py), per call and per request.

    python bench/idioms.py [--repeats 41] [--sample-ms 4] [--only WORD ...] [--model-dir DIR]

Each case pairs an idiom (the service's code, or, marked "(reverted)", its former code)
with the plain form (np.stack, np.median, np.asarray, a frozen dataclass, FastAPI's
Depends, ...) on the benchmark digit (MNIST's first training image, from MNIST_DIR) and the
embedded model or `--model-dir`. "per request" is how often a 28x28 PNG reconstruct runs it
at batch 1, the worst case: what runs once per batch is shared by the batch under load. The
HTTP layer's cases are in bench/idioms_http.py; its asyncio and ASGI ones run on uvloop, as
vae-serve does, the ASGI ones through the real app with its lifespan running.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import idioms_http
import idioms_images
import numpy as np
import uvloop
from ab import HEADER, Case, close, equal, measure, sample_us, sample_us_async
from harness import machine

from service.images import grid, png
from service.inference import jobs
from service.model.loader import load_runtime
from service.model.manifest import read_manifest
from service.model.runtime import ModelRuntime

EMBEDDED = Path(__file__).resolve().parents[1] / "service" / "default_model" / "vae"


def split_by_numpy(rows: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    """jobs._split as np.split."""
    return list(np.split(rows, np.cumsum([len(part) for part in like])[:-1]))


def model_cases(served: ModelRuntime) -> Iterator[Case]:
    x = (np.random.default_rng(0).random((1, 784)) > 0.5).astype(np.float32)
    xs, mu = [x], x[:, :64]
    yield Case(
        "(reverted) one part: not np.concatenate",
        "jobs._stack",
        lambda: xs[0] if len(xs) == 1 else np.concatenate(xs),
        lambda: np.concatenate(xs),
        1,
        equal,
    )
    yield Case(
        "(reverted) one part: not sliced",
        "jobs._split",
        lambda: [mu] if len(xs) == 1 else jobs._split(mu, xs),
        lambda: jobs._split(mu, xs),
        3,
        equal,
    )
    yield Case(
        "slices, not np.split (one part)",
        "jobs._split",
        lambda: jobs._split(mu, xs),
        lambda: split_by_numpy(mu, xs),
        3,
        equal,
    )
    if served.fused is None:
        return
    outputs = served.fused.run(["mu", "logvar", "probs"], {"x": x})
    yield Case(
        "one chunk: outputs not concatenated",
        "runtime._chunked_run",
        lambda: outputs,
        lambda: [np.concatenate([p]) for p in outputs],
        1,
        equal,
    )
    _, probs = served.sample(64, 1.0, np.random.default_rng(0))
    cells = np.rint(probs * 255.0).astype(np.uint8).reshape(-1, *served.manifest.image_shape)
    raw = np.pad(grid._tile(cells, 8), ((0, 0), (1, 0))).tobytes()  # as png.encode writes it
    yield Case(
        "a sample n=64's grid at zlib level 1, not 6 (per sample request)",
        "png.encode",
        lambda: zlib.compress(raw, png.PNG_COMPRESS_LEVEL),
        lambda: zlib.compress(raw, 6),
        1,
        lambda a, b: zlib.decompress(a) == zlib.decompress(b),
    )
    two = dataclasses.replace(served, fused=None)
    yield Case(
        "the fused graph, not encoder + decoder",
        "runtime.reconstruct_mean",
        lambda: served.reconstruct_mean(x),
        lambda: two.reconstruct_mean(x),
        1,
        close,
    )


def runtime(model_dir: Path) -> ModelRuntime:
    return load_runtime(model_dir, read_manifest(model_dir), threads=1, source="repository")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=41)
    parser.add_argument("--sample-ms", type=float, default=4.0, help="length of one sample")
    parser.add_argument("--only", nargs="*", default=[], help="cases whose idiom holds a word")
    parser.add_argument("--model-dir", type=Path, help="a version directory (default: embedded)")
    args = parser.parse_args()
    model_dir = args.model_dir or max(
        (p for p in EMBEDDED.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
    )
    print(f"machine: {machine()}")
    print(f"model: {model_dir}; {args.repeats} repeats of ~{args.sample_ms:g} ms per form")
    print(HEADER)
    d = idioms_images.digit()
    cases = [
        *idioms_images.preprocess_cases(d),
        *idioms_images.codec_cases(d),
        *model_cases(runtime(model_dir)),
    ]

    def chosen(cases: list[Case]) -> list[Case]:
        return [c for c in cases if not args.only or any(w in c.idiom for w in args.only)]

    measure(
        chosen([*cases, *idioms_http.sync_cases()]), call, sample_us, args.repeats, args.sample_ms
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:

        def sampler(fn: Callable[[], Any], calls: int) -> float:
            return runner.run(sample_us_async(fn, calls))

        def result(fn: Callable[[], Any]) -> Any:
            return runner.run(fn())

        with idioms_http.serving(runner, args.model_dir) as app:
            later = [*idioms_http.loop_cases(), *idioms_http.app_cases(app, d.data)]
            measure(chosen(later), result, sampler, args.repeats, args.sample_ms)


def call(fn: Callable[[], Any]) -> Any:
    return fn()


if __name__ == "__main__":
    main()
