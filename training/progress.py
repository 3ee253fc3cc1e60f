"""Progress of a long loop: a tqdm bar on a terminal, otherwise a log line every few seconds.

Training and evaluation both report through a `Meter`, so that neither is ever silent for
long, with or without a terminal.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

from tqdm import tqdm

LINE_SECONDS = 10.0  # seconds between progress lines when there is no bar

log = logging.getLogger(__name__)


def wants_bar(progress: bool) -> bool:
    """A bar only where someone watches it: asked for, and stderr is a terminal."""
    return progress and sys.stderr.isatty()


def duration(seconds: float) -> str:
    """Seconds in words for a log line: '48 s', '3 min 05 s', '1 h 02 min'."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Meter:
    """`done` of `total` units, with named figures (losses, -ELBO) shown beside the count."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str,
        *,
        bar: bool,
        every_s: float = LINE_SECONDS,
        initial: int = 0,
    ) -> None:
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.done = self.first = initial
        self.started = self.last_line = time.perf_counter()
        self.figures: dict[str, str] = {}
        self.bar = (
            tqdm(
                total=total,
                initial=initial,
                desc=what,
                unit=unit,
                mininterval=0.5,
                dynamic_ncols=True,
            )
            if bar
            else None
        )

    def update(self, n: int, **figures: str) -> None:
        """`n` more units done; `figures` replace those of the same name."""
        self.done += n
        self.figures.update(figures)
        if self.bar is not None:
            self.bar.set_postfix(self.figures, refresh=False)
            self.bar.update(n)
        elif time.perf_counter() - self.last_line >= self.every_s:
            self.line()

    def line(self) -> None:
        """One log line: count, figures, rate and the time left at that rate."""
        now = time.perf_counter()
        seconds = now - self.started
        rate = (self.done - self.first) / max(seconds, 1e-9)
        if self.done >= self.total:
            when = f"done in {duration(seconds)}"
        else:
            when = f"ETA {duration((self.total - self.done) / rate) if rate > 0 else 'unknown'}"
        figures = "".join(f", {k} {v}" for k, v in self.figures.items())
        log.info(
            "%s: %s %d/%d (%d%%)%s, %.1f %s/s, %s",
            self.what,
            self.unit,
            self.done,
            self.total,
            100 * self.done // max(self.total, 1),
            figures,
            rate,
            self.unit,
            when,
        )
        self.last_line = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.done > self.first:
            self.line()

    def __enter__(self) -> Meter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        elif self.bar is not None:
            self.bar.close()
