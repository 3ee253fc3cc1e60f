"""The micro-batcher and the batched model jobs, without HTTP (and without timing)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.batcher import BatcherClosedError, MicroBatcher
from service.latent import Array, reparameterize
from service.loader import load_runtime
from service.manifest import read_manifest
from service.offload import ImageInputs, ModelJob, Pass, mean_latent, run_jobs, run_one
from service.preprocess import ImageOptions, open_image
from service.problems import ApiProblem
from service.runtime import ModelRuntime
from service.settings import Settings
from service.uploads import INLINE_MAX_MULTIPART_BYTES
from tests.service.service_helpers import install, metric
from tests.service.service_samples import PNG, digit_png, gray_array_png, multipart, photo_png


class Recorder:
    """A batch function that records its batches; the first batch can be held at a gate."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        if not hold_first:
            self.gate.set()

    def __call__(self, items: list[int]) -> list[int | Exception]:
        self.batches.append(items)
        self.entered.set()
        self.gate.wait()
        return [ValueError(f"item {i}") if i < 0 else i * 10 for i in items]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder(hold_first=True)


def started(run: Callable[[list[int]], list[int | Exception]], **kwargs: float) -> MicroBatcher:
    batcher: MicroBatcher[int, int] = MicroBatcher(run, **kwargs)  # type: ignore[arg-type]
    batcher.start()
    return batcher


async def submit_all(batcher: MicroBatcher[int, int], items: list[int]) -> list[object]:
    return await asyncio.gather(*(batcher.submit(i) for i in items), return_exceptions=True)


def test_collects_until_full_and_takes_only_what_is_queued(recorder: Recorder) -> None:
    batcher = started(recorder, max_size=3)

    async def scenario() -> list[object]:
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.to_thread(recorder.entered.wait)  # the thread holds batch [0] at the gate
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0)  # every submit has queued its item
        recorder.gate.set()
        return await asyncio.gather(first, *rest)

    try:
        assert asyncio.run(scenario()) == [0, 10, 20, 30, 40, 50]
    finally:
        batcher.close()
    assert recorder.batches == [[0], [1, 2, 3], [4, 5]]


def test_a_full_batch_does_not_wait_for_the_deadline() -> None:
    recorder = Recorder()
    batcher = started(recorder, max_size=1, max_delay_s=3600.0)
    try:
        assert asyncio.run(submit_all(batcher, [1, 2])) == [10, 20]
    finally:
        batcher.close()
    assert sorted(recorder.batches) == [[1], [2]]


def test_an_item_error_fails_that_item_only() -> None:
    batcher = started(Recorder(), max_size=8)
    try:
        outcomes = asyncio.run(submit_all(batcher, [1, -1, 2]))
    finally:
        batcher.close()
    assert outcomes[0] == 10 and outcomes[2] == 20
    assert isinstance(outcomes[1], ValueError)


def test_a_failed_batch_fails_every_waiter() -> None:
    def broken(items: list[int]) -> list[int | Exception]:
        raise OSError("the model fell over")

    batcher = started(broken, max_size=8)
    try:
        outcomes = asyncio.run(submit_all(batcher, [1, 2, 3]))
    finally:
        batcher.close()
    assert all(isinstance(o, OSError) for o in outcomes)


def test_outputs_must_match_inputs_in_number() -> None:
    def short(items: list[int]) -> list[int | Exception]:
        return list(items[1:])

    batcher = started(short, max_size=8)
    try:
        outcomes = asyncio.run(submit_all(batcher, [1, 2]))
    finally:
        batcher.close()
    assert all(isinstance(o, RuntimeError) and "outputs" in str(o) for o in outcomes)


def test_closed_batcher_refuses_and_restarts() -> None:
    batcher = started(Recorder(), max_size=4)
    batcher.close()
    assert not batcher.running
    with pytest.raises(BatcherClosedError):
        asyncio.run(batcher.submit(1))
    batcher.start()
    try:
        assert asyncio.run(batcher.submit(3)) == 30
    finally:
        batcher.close()


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_size"):
        MicroBatcher(Recorder(), max_size=0)


# Batched model jobs: the same bytes as one job at a time.


@pytest.fixture(scope="module")
def runtimes(published: dict[str, Path]) -> dict[str, ModelRuntime]:
    return {
        name: load_runtime(path, read_manifest(path), threads=1, source="repository")
        for name, path in published.items()
    }


def images(count: int, seed: int) -> Array:
    return (np.random.default_rng(seed).random((count, 784)) > 0.7).astype(np.float32)


def job(runtime: ModelRuntime, x: Array, seed: int | None, decode: bool = True) -> ModelJob[Pass]:
    def latent(mu: Array, logvar: Array) -> Array:
        return mu if seed is None else reparameterize(mu, logvar, np.random.default_rng(seed))

    return ModelJob(runtime, lambda: x, latent if decode else None, lambda result: result)


def mixed_jobs(runtimes: dict[str, ModelRuntime]) -> list[ModelJob[Pass]]:
    a, b = runtimes["a"], runtimes["b"]
    return [
        job(a, images(1, 0), None),
        job(a, images(3, 1), 7),
        job(b, images(2, 2), None),  # a hot swap can mix models in one batch
        job(a, images(1, 3), None, decode=False),
        job(a, images(2, 4), 8),
    ]


def test_batched_jobs_equal_jobs_run_alone(runtimes: dict[str, ModelRuntime]) -> None:
    together = run_jobs(mixed_jobs(runtimes))
    alone = [run_one(j) for j in mixed_jobs(runtimes)]
    assert len(together) == len(alone)
    for shared, single in zip(together, alone, strict=True):
        assert isinstance(shared, Pass)
        for name in ("x", "mu", "logvar", "z", "probs"):
            got, want = getattr(shared, name), getattr(single, name)
            assert (got is None) == (want is None), name
            if want is not None:
                assert got.tobytes() == want.tobytes(), name  # bit for bit


def test_a_bad_input_fails_its_job_alone(runtimes: dict[str, ModelRuntime]) -> None:
    def bad() -> Array:
        raise ValueError("not an image")

    jobs = mixed_jobs(runtimes)
    jobs.insert(1, ModelJob(runtimes["a"], bad, None, lambda result: result))
    outcomes = run_jobs(jobs)
    assert isinstance(outcomes[1], ValueError)
    assert all(isinstance(o, Pass) for i, o in enumerate(outcomes) if i != 1)


# Through the app: batching on or off gives the same bytes.


@pytest.fixture
def two_clients(
    repo: Path, published: dict[str, Path], make_settings: Callable[..., Settings]
) -> Iterator[tuple[TestClient, TestClient]]:
    install(repo, published["a"], 1)
    with (
        TestClient(create_app(make_settings(batch_max_size=16))) as batched,
        TestClient(create_app(make_settings(batch_max_size=0))) as unbatched,
    ):
        yield batched, unbatched


def test_batching_on_and_off_answer_the_same_bytes(
    two_clients: tuple[TestClient, TestClient],
) -> None:
    batched, unbatched = two_clients
    body, headers = digit_png(), {"content-type": PNG}
    paths = ("/v1/reconstruct?mode=sample&seed=3", "/v1/reconstruct", "/v1/encode?sample=1&seed=5")
    for path in paths:
        on = batched.post(path, content=body, headers=headers)
        off = unbatched.post(path, content=body, headers=headers)
        assert on.status_code == off.status_code == 200, path
        assert on.content == off.content, path
    assert metric(batched, "vae_inference_batch_size_count") == 3
    assert metric(unbatched, "vae_inference_batch_size_count") == 0


def test_a_small_multipart_batch_joins_the_inference_thread(
    two_clients: tuple[TestClient, TestClient],
) -> None:
    batched, unbatched = two_clients
    small, small_type = multipart([digit_png(), digit_png()])
    assert len(small) <= INLINE_MAX_MULTIPART_BYTES
    # Past the inline size (here by a text field, which is not an image), the body is parsed
    # in the job, on a worker thread.
    large = small.replace(
        b"--testboundary--", text_part(INLINE_MAX_MULTIPART_BYTES) + b"--testboundary--"
    )
    for body in (small, large):
        on = batched.post("/v1/reconstruct", content=body, headers={"content-type": small_type})
        off = unbatched.post("/v1/reconstruct", content=body, headers={"content-type": small_type})
        assert on.status_code == off.status_code == 200
        assert on.content == off.content
    assert metric(batched, "vae_inference_batch_size_count") == 1  # the small body only
    assert metric(batched, "vae_inference_duration_seconds_count", operation="reconstruct") == 2


def text_part(size: int) -> bytes:
    return (
        b'--testboundary\r\nContent-Disposition: form-data; name="note"\r\n\r\n'
        + b"x" * size
        + b"\r\n"
    )


def image_job(runtime: ModelRuntime, data: list[bytes], latent: bool = True) -> ModelJob[Pass]:
    opened = [open_image(d, f"files[{i}]", 4096 * 4096) for i, d in enumerate(data)]
    options = ImageOptions("mnist", True, 0.5, (28, 28))
    return ModelJob(
        runtime,
        ImageInputs(lambda: opened, options),
        mean_latent if latent else None,
        lambda result: result,
    )


def test_image_jobs_preprocessed_together_equal_jobs_run_alone(
    runtimes: dict[str, ModelRuntime],
) -> None:
    a = runtimes["a"]
    blank = gray_array_png(np.zeros((28, 28)))

    def jobs() -> list[ModelJob[Pass]]:
        return [
            image_job(a, [digit_png()]),
            image_job(a, [photo_png(), digit_png()], latent=False),
            image_job(a, [digit_png(), blank]),  # one bad image fails its request alone
            job(a, images(2, 9), None),  # a job that brings its own x
            image_job(a, [photo_png()]),
        ]

    together = run_jobs(jobs())
    assert isinstance(together[2], ApiProblem) and together[2].problem.field == "files[1]"
    for i, (shared, one) in enumerate(zip(together, jobs(), strict=True)):
        if i == 2:
            continue
        single = run_one(one)
        assert isinstance(shared, Pass)
        for name in ("x", "mu", "logvar", "z", "probs"):
            got, want = getattr(shared, name), getattr(single, name)
            assert (got is None) == (want is None), name
            if want is not None:
                assert got.tobytes() == want.tobytes(), name
