"""Hand memory freed by a hot swap back to the operating system.

A swapped-out model's sessions are freed when the last request using them ends, but glibc's
allocator keeps the freed pages in its arenas (one per thread that allocated), so without
this the server's RSS creeps up by about a model's worth per swap until it plateaus
(docs/reliability.md). `malloc_trim(0)` returns whole free pages of every arena; it takes
well under a millisecond. On other C libraries (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


def release_freed_memory() -> bool:
    """Return free heap pages to the OS; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
