"""A micro-batcher: one inference thread that runs concurrent requests' work together.

As Triton's dynamic batcher and LitServe's: items queue up; the thread takes the first, then
collects more until `max_size` items or `max_delay_s` after the first (0: only what is
already queued, never waiting), calls `run(items)` once, and hands each waiter its own
output or the error. `run` must return one output per item (an exception in place of an
output fails that item only); if `run` raises, or returns the wrong count, every waiter of
the batch gets the error. Each event loop is woken once per batch, not once per item.

Nothing here knows about models or HTTP. Measured reasons for it: docs/benchmarks.md.
`pending` counts the items submitted from one event loop and not yet answered (the
executor's sign that the thread is busy).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosedError(RuntimeError):
    """The batcher was closed before (or while) the item was queued."""


@dataclass(frozen=True)
class _Waiter(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    loop: asyncio.AbstractEventLoop


class MicroBatcher(Generic[T, R]):
    """Collect items until `max_size` or `max_delay_s` after the first; run them together."""

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R | Exception]],
        max_size: int,
        max_delay_s: float = 0.0,
        name: str = "inference",
    ) -> None:
        if max_size < 1 or max_delay_s < 0:
            raise ValueError("max_size must be >= 1 and max_delay_s >= 0")
        self.run = run
        self.max_size = max_size
        self.max_delay_s = max_delay_s
        self.name = name
        self._queue: queue.SimpleQueue[_Waiter[T, R] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = True
        self.pending = 0  # items submitted and not yet answered (read and kept on the loop)

    def start(self) -> None:
        """Start the thread (again, after `close`)."""
        if self.running:
            return
        self._queue = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Finish the batches already queued, then stop the thread; later submits fail."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()
        self._fail_queued()

    @property
    def running(self) -> bool:
        return not self._closed and self._thread is not None and self._thread.is_alive()

    async def submit(self, item: T) -> R:
        """Queue `item` and wait for its output (its exception is raised here)."""
        if not self.running:
            raise BatcherClosedError("the inference thread is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put(_Waiter(item, future, loop))
        self.pending += 1
        try:
            return await future
        finally:
            self.pending -= 1

    def _serve(self) -> None:
        while (batch := self._collect()) is not None:
            _deliver(batch, self._outputs(batch))

    def _collect(self) -> list[_Waiter[T, R]] | None:
        """The next batch; None once closed."""
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.max_delay_s
        while len(batch) < self.max_size:
            remaining = deadline - time.monotonic()
            try:
                waiter = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if waiter is None:  # closing: run what was collected, then stop
                self._queue.put(None)
                break
            batch.append(waiter)
        return batch

    def _outputs(self, batch: list[_Waiter[T, R]]) -> Sequence[R | Exception]:
        try:
            outputs = self.run([w.item for w in batch])
        except Exception as exc:  # the whole batch failed: every waiter hears of it
            return [exc] * len(batch)
        if len(outputs) != len(batch):
            error = RuntimeError(f"a batch of {len(batch)} items gave {len(outputs)} outputs")
            return [error] * len(batch)
        return outputs

    def _fail_queued(self) -> None:
        leftovers: list[_Waiter[T, R]] = []
        with contextlib.suppress(queue.Empty):
            while True:
                waiter = self._queue.get_nowait()
                if waiter is not None:
                    leftovers.append(waiter)
        error = BatcherClosedError("the inference thread stopped")
        _deliver(leftovers, [error] * len(leftovers))


def _deliver(batch: list[_Waiter[T, R]], outputs: Sequence[R | Exception]) -> None:
    """Resolve each waiter's future on its own loop, one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Waiter[T, R], R | Exception]]] = {}
    for waiter, output in zip(batch, outputs, strict=True):
        by_loop.setdefault(waiter.loop, []).append((waiter, output))
    for loop, pairs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_resolve, pairs)


def _resolve(pairs: list[tuple[_Waiter[T, R], R | Exception]]) -> None:
    for waiter, output in pairs:
        if waiter.future.done():  # cancelled: the client went away
            continue
        if isinstance(output, Exception):
            waiter.future.set_exception(output)
        else:
            waiter.future.set_result(output)
