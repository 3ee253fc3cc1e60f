"""SIGINT and SIGTERM during training: finish the step, write a checkpoint, then stop."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):  # noqa: N818 (a stop the user asked for, not an error)
    """Training stopped on a signal after writing `checkpoint` at `iteration`."""

    def __init__(self, signum: int, iteration: int, checkpoint: Path) -> None:
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"{name} at iteration {iteration}: checkpoint written to {checkpoint}")


class SignalExit(KeyboardInterrupt):
    """SIGTERM (or SIGINT) outside the training loop, raised where the program is."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class StopRequest:
    """The signal received, if any; the loop checks it between steps."""

    signum: int = 0


@contextmanager
def deferred_signals() -> Iterator[StopRequest]:
    """While inside, SIGINT and SIGTERM only set `signum` of the yielded request.

    Signal handlers can be set only in the main thread; elsewhere (a library caller's
    worker thread) the signals keep their usual effect.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def note(signum: int, _frame: FrameType | None) -> None:
        request.signum = signum

    previous = {s: signal.signal(s, note) for s in SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """SIGTERM raises SignalExit (a KeyboardInterrupt), as SIGINT raises KeyboardInterrupt,
    so that cleanup code runs: a publish in progress removes its staging directory."""

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise SignalExit(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
