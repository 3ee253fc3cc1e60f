"""Reading a model repository's files as if the repository were hostile.

A manifest or graph may be a FIFO (an open would block the watcher forever), a device such
as /dev/zero (a read would never end), a huge file, or unreadable. Only a regular file of at
most `limit` bytes is read, and errors say what went wrong without the file's path: they end
up in GET /v1/models, which must not disclose the server's directory layout.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


class UnreadableFileError(Exception):
    """A file could not be read; the message names no path."""


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of `path`, which must be a regular file of at most `limit` bytes.

    Opened non-blocking, so a FIFO is refused instead of waited on.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            data = _read(fd, limit)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UnreadableFileError(f"cannot read: {os_reason(exc)}") from exc
    if len(data) > limit:  # it grew since the fstat
        raise _too_large(limit)
    return data


def _read(fd: int, limit: int) -> bytes:
    """Up to limit + 1 bytes of the open file `fd`, once fstat says it may be read."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "of another kind")
        raise UnreadableFileError(f"not a regular file ({kind})")
    if info.st_size > limit:
        raise _too_large(limit)
    with open(fd, "rb", closefd=False) as file:
        return file.read(limit + 1)


def os_reason(exc: OSError) -> str:
    """An OSError in words without the file name its str() carries ("Permission denied")."""
    return exc.strerror or type(exc).__name__


def _too_large(limit: int) -> UnreadableFileError:
    return UnreadableFileError(f"larger than the limit of {limit} bytes")
