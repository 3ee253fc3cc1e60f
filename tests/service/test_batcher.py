"""The micro-batcher and the batched model jobs, without HTTP (and without timing)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.http.uploads import INLINE_MAX_MULTIPART_BYTES
from service.images.errors import ImageError
from service.inference.batcher import BatcherClosedError, MicroBatcher
from service.inference.jobs import Draw, Job, Result, run_jobs
from service.model.runtime import ModelRuntime
from service.settings import Settings
from tests.service.jobs_helpers import alone, assert_same, binary_x, image_job, job, load_runtime
from tests.service.service_helpers import batched_sizes, concurrently, install, metric
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
    return {name: load_runtime(path) for name, path in published.items()}


def mixed_jobs(runtimes: dict[str, ModelRuntime]) -> list[Job[Result]]:
    a, b = runtimes["a"], runtimes["b"]
    return [
        job(a, binary_x(1, 0), "mean"),
        job(a, binary_x(3, 1), Draw(7)),
        job(b, binary_x(2, 2), "mean"),  # a hot swap can mix models in one batch
        job(a, binary_x(1, 3), None, decode=False),
        job(a, binary_x(2, 4), Draw(8)),
        job(a, binary_x(2, 5), Draw(9), decode=False),  # encode, and draw z without decoding
    ]


def test_batched_jobs_equal_jobs_run_alone(runtimes: dict[str, ModelRuntime]) -> None:
    together = run_jobs(mixed_jobs(runtimes))
    for shared, one in zip(together, mixed_jobs(runtimes), strict=True):
        assert isinstance(shared, Result)
        assert_same(shared, alone(one))
    assert isinstance(together[5], Result) and together[5].z is not None
    assert together[5].probs is None


def test_a_bad_input_fails_its_job_alone(runtimes: dict[str, ModelRuntime]) -> None:
    jobs = mixed_jobs(runtimes)
    jobs.insert(1, image_job(runtimes["a"], [b"not an image"]))
    outcomes = run_jobs(jobs)
    assert isinstance(outcomes[1], ImageError) and outcomes[1].code == "not_an_image"
    assert all(isinstance(o, Result) for i, o in enumerate(outcomes) if i != 1)


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


PATHS = ("/v1/reconstruct?mode=sample&seed=3", "/v1/reconstruct", "/v1/encode?sample=1&seed=5")


def test_lone_requests_run_inline_with_the_same_bytes(
    two_clients: tuple[TestClient, TestClient],
) -> None:
    """One request at a time skips the hop to the inference thread (it would cost about as
    much as the work): nothing is batched, and the answers are the unbatched ones."""
    batched, unbatched = two_clients
    body, headers = digit_png(), {"content-type": PNG}
    for path in PATHS:
        on = batched.post(path, content=body, headers=headers)
        off = unbatched.post(path, content=body, headers=headers)
        assert on.status_code == off.status_code == 200, path
        assert on.content == off.content, path
    assert metric(batched, "vae_inference_batch_size_count") == 0
    assert metric(batched, "vae_inference_duration_seconds_count", operation="reconstruct") == 2


def test_concurrent_requests_are_batched_with_the_same_bytes(
    repo: Path, published: dict[str, Path], make_settings: Callable[..., Settings]
) -> None:
    install(repo, published["a"], 1)
    small, small_type = multipart([digit_png(), digit_png()])
    assert len(small) <= INLINE_MAX_MULTIPART_BYTES
    requests = [(path, digit_png(), PNG) for path in PATHS] * 2
    requests.append(("/v1/reconstruct", small, small_type))  # a small multipart body joins
    app = create_app(make_settings(batch_max_size=16))
    answers = asyncio.run(concurrently(app, requests))
    unbatched = asyncio.run(concurrently(create_app(make_settings(batch_max_size=0)), requests))
    for on, off in zip(answers, unbatched, strict=True):
        assert on.status_code == off.status_code == 200
        assert on.content == off.content
    batches, served = batched_sizes(app)
    assert served == len(requests) and batches < len(requests)


def test_a_large_multipart_body_is_read_on_a_worker_thread(
    two_clients: tuple[TestClient, TestClient],
) -> None:
    """Past the inline size (here by a text field, which is not an image), the body is parsed
    in the job, on a worker thread: never on the loop, never batched."""
    batched, unbatched = two_clients
    small, small_type = multipart([digit_png(), digit_png()])
    large = small.replace(
        b"--testboundary--", text_part(INLINE_MAX_MULTIPART_BYTES) + b"--testboundary--"
    )
    on = batched.post("/v1/reconstruct", content=large, headers={"content-type": small_type})
    off = unbatched.post("/v1/reconstruct", content=large, headers={"content-type": small_type})
    assert on.status_code == off.status_code == 200
    assert on.content == off.content
    assert metric(batched, "vae_inference_batch_size_count") == 0
    assert metric(batched, "vae_inference_duration_seconds_count", operation="reconstruct") == 1


def text_part(size: int) -> bytes:
    return (
        b'--testboundary\r\nContent-Disposition: form-data; name="note"\r\n\r\n'
        + b"x" * size
        + b"\r\n"
    )


def test_image_jobs_preprocessed_together_equal_jobs_run_alone(
    runtimes: dict[str, ModelRuntime],
) -> None:
    a = runtimes["a"]
    blank = gray_array_png(np.zeros((28, 28)))

    def jobs() -> list[Job[Result]]:
        return [
            image_job(a, [digit_png()]),
            image_job(a, [photo_png(), digit_png()], decode=False),
            image_job(a, [digit_png(), blank]),  # one bad image fails its request alone
            job(a, binary_x(2, 9), "mean"),  # images taken as they are, in the same batch
            image_job(a, [photo_png()]),
        ]

    together = run_jobs(jobs())
    assert isinstance(together[2], ImageError) and together[2].field == "files[1]"
    for i, (shared, one) in enumerate(zip(together, jobs(), strict=True)):
        if i != 2:
            assert isinstance(shared, Result)
            assert_same(shared, alone(one))
