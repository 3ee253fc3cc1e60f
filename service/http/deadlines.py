"""Request bodies must arrive by a deadline: requests still waiting for theirs get a 408.

One periodic sweep, run by the app's lifespan, cancels the waits past their deadline, in the
manner of asyncio.timeout (cancel, then uncancel where the wait is). A timer per request
(asyncio.timeout around each receive) cost ~10 us per request on the hot path here; a wait
that returns at once (a small body arrives with its headers) now costs a dict entry.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.types import Message, Receive

from service.http.problems import ApiProblem


class BodyDeadlines:
    """Requests waiting for more of their body, each with its deadline."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.period_s = min(1.0, timeout_s / 4)  # a 408 comes at most this late
        self._waiting: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()

    async def receive(self, receive: Receive, start: float) -> Message:
        """`await receive()`, or a 408 problem if the request's body deadline (`start`, a
        time.perf_counter(), + timeout_s) passes while it waits."""
        task = asyncio.current_task()
        assert task is not None
        self._waiting[task] = start + self.timeout_s
        try:
            return await receive()
        except asyncio.CancelledError:
            if task not in self._expired:  # cancelled by someone else: not ours to handle
                raise
            self._expired.discard(task)
            task.uncancel()
            raise body_timed_out(self.timeout_s) from None
        finally:
            del self._waiting[task]

    async def run(self) -> None:
        """Every period_s, cancel the waits of this loop that are past their deadline."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.period_s)
            now = time.perf_counter()
            for task, deadline in list(self._waiting.items()):
                if deadline <= now and task.get_loop() is loop and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()


def body_timed_out(timeout_s: float) -> ApiProblem:
    return ApiProblem(
        408,
        "body-timeout",
        f"the request body did not arrive within {timeout_s:g} s",
        title="Request body timeout",
        field="body",
        headers={"Connection": "close"},  # the rest of the body may still be on its way
    )
