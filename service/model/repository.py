"""One model repository root (`<root>/vae/<version>/`): scan it and validate its versions.

A version is validated at most once per content: a rejection is remembered with a fingerprint
of the files (names, sizes, mtimes), so a version that is fixed in place is tried again. The
repository may be hostile: whatever reading or validating a version raises rejects that
version (logged once, with its traceback when unexpected), and no reason names a server path.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from service.model.loader import ModelLoadError, load_runtime
from service.model.manifest import MANIFEST_FILE, ManifestError, read_manifest
from service.model.runtime import ModelRuntime, NonFiniteOutputError, Source

MODEL_NAME = "vae"
# The embedded default model is version 0, so a repository's version 0 would be a second
# model behind the same X-Model-Version.
FIRST_VERSION: dict[Source, int] = {"repository": 1, "embedded": 0}
RESERVED = "version 0 is reserved for the embedded default model; publish versions from 1"
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/[^\s'\"]+")
# serving; available: validated by this process, not served now; unvalidated: complete but
# never examined (a newer version was served first), so it may yet be rejected; rejected;
# incomplete: no manifest.json yet.
VersionStatus = Literal["serving", "available", "unvalidated", "rejected", "incomplete"]
Fingerprint = tuple[tuple[str, int, int], ...]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionEntry:
    """A version directory as found on disk."""

    version: int
    path: Path
    complete: bool  # manifest.json exists
    fingerprint: Fingerprint


@dataclass(frozen=True)
class VersionRecord:
    """A version as reported by GET /v1/models."""

    version: int
    source: Source
    status: VersionStatus
    reason: str | None = None


@dataclass(frozen=True)
class Rejection:
    version: int
    source: Source
    reason: str


@dataclass(frozen=True)
class Withdrawal:
    """A served version gave a non-finite output: withdraw these files of it."""

    source: Source
    version: int
    fingerprint: Fingerprint
    error: NonFiniteOutputError
    at: float  # time.time() when it happened


class ModelRepository:
    """Scans one root and loads its best version; used from one thread at a time (but for
    the runtimes' reports, which only call `on_broken`)."""

    def __init__(
        self,
        root: Path,
        source: Source,
        threads: int,
        on_broken: Callable[[Withdrawal], None] | None = None,
    ) -> None:
        self.root = root
        self.source: Source = source
        self.threads = threads
        self.on_broken = on_broken  # called from any thread: see ModelRuntime.report
        self._rejected: dict[int, tuple[Fingerprint, str]] = {}
        self._validated: dict[int, Fingerprint] = {}

    def scan(self) -> list[VersionEntry]:
        """Version directories (digits only) under `root/vae`, highest first; [] if missing."""
        try:
            with os.scandir(self.root / MODEL_NAME) as listing:
                children = [c for c in listing if c.name.isascii() and c.name.isdigit()]
        except OSError:
            return []
        entries = [_entry(Path(child.path)) for child in children if _is_dir(child)]
        return sorted(entries, key=lambda e: e.version, reverse=True)

    def load_best(
        self, entries: list[VersionEntry], above: int
    ) -> tuple[ModelRuntime | None, list[Rejection]]:
        """Load the highest complete version > `above` that validates; report new rejections.

        Versions below FIRST_VERSION are rejected whenever they are complete, served or not.
        """
        rejections = [
            self._reject(entry, RESERVED)
            for entry in entries
            if entry.version < FIRST_VERSION[self.source]
            and entry.complete
            and self.rejection(entry) is None
        ]
        for entry in entries:
            if entry.version <= above:
                break
            if not entry.complete or self.rejection(entry) is not None:
                continue
            try:
                return self._load(entry), rejections
            except (ManifestError, ModelLoadError) as exc:
                rejections.append(self._reject(entry, str(exc)))
            except Exception as exc:  # a hostile version must not stop the watcher: reject it
                reason = f"validation failed: {type(exc).__name__}: {exc}"
                rejections.append(self._reject(entry, reason, unexpected=exc))
        return None, rejections

    def withdraw(self, withdrawal: Withdrawal) -> Rejection | None:
        """Reject a served version that gave a non-finite output, until its files change.

        None when these files of it are not the validated ones (already withdrawn, or
        replaced since the run that failed): nothing to do.
        """
        version, fingerprint = withdrawal.version, withdrawal.fingerprint
        if self._validated.get(version) != fingerprint:
            return None
        del self._validated[version]
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(withdrawal.at))
        error = withdrawal.error
        reason = (
            f"withdrawn at {when}: the {error.graph} graph's {error.output} was not finite "
            "on a request"
        )
        self._rejected[version] = (fingerprint, reason)
        log.error("%s version %d: %s", self.source, version, reason)
        return Rejection(version, self.source, reason)

    def rejection(self, entry: VersionEntry) -> str | None:
        """Why this version (with these exact files) was rejected, if it was."""
        remembered = self._rejected.get(entry.version)
        if remembered is None or remembered[0] != entry.fingerprint:
            return None
        return remembered[1]

    def records(self, entries: list[VersionEntry], serving: int | None) -> list[VersionRecord]:
        """The status of each scanned version, for GET /v1/models."""
        return [self._record(entry, serving) for entry in entries]

    def _record(self, entry: VersionEntry, serving: int | None) -> VersionRecord:
        reason = self.rejection(entry)
        status: VersionStatus
        if not entry.complete:
            status = "incomplete"
        elif reason is not None:
            status = "rejected"
        elif entry.version == serving:
            status = "serving"
        elif self._validated.get(entry.version) == entry.fingerprint:
            status = "available"
        else:
            status = "unvalidated"
        return VersionRecord(entry.version, self.source, status, reason)

    def _load(self, entry: VersionEntry) -> ModelRuntime:
        manifest = read_manifest(entry.path)
        report = None if self.on_broken is None else partial(self._report, entry)
        runtime = load_runtime(
            entry.path, manifest, threads=self.threads, source=self.source, report=report
        )
        self._validated[entry.version] = entry.fingerprint
        log.info("validated %s version %d at %s", self.source, entry.version, entry.path)
        return runtime

    def _report(self, entry: VersionEntry, error: NonFiniteOutputError) -> None:
        """A runtime loaded from `entry` failed (on an inference thread): pass it on."""
        if self.on_broken is not None:
            withdrawal = Withdrawal(
                self.source, entry.version, entry.fingerprint, error, time.time()
            )
            self.on_broken(withdrawal)

    def _reject(
        self, entry: VersionEntry, reason: str, unexpected: Exception | None = None
    ) -> Rejection:
        """Remember (and log, once) why these files of a version are not served."""
        reason = _without_paths(reason)
        self._rejected[entry.version] = (entry.fingerprint, reason)
        log.warning(
            "rejected %s version %d at %s: %s",
            self.source,
            entry.version,
            entry.path,
            reason,
            exc_info=unexpected,
        )
        return Rejection(entry.version, self.source, reason)


def _without_paths(reason: str) -> str:
    """The reason with any absolute path replaced, as GET /v1/models may show it to anyone.

    The messages written here name files relative to their version; this catches what a
    library's message may carry (onnxruntime names resolved paths of external data).
    """
    return _ABSOLUTE_PATH.sub("<path>", reason)


def _is_dir(child: os.DirEntry[str]) -> bool:
    try:
        return child.is_dir()
    except OSError:  # unreadable: not a version we can see
        return False


def _entry(path: Path) -> VersionEntry:
    """The version at `path`, complete once any entry named manifest.json exists in it (one
    that is no readable file is then rejected with its reason, never left "incomplete")."""
    try:
        with os.scandir(path) as children:  # closed even when a file vanishes mid-listing
            files = sorted(_file_state(child) for child in children)
    except OSError:  # removed or changing while listed: incomplete until the next poll
        files = []
    complete = any(name == MANIFEST_FILE for name, _, _ in files)
    return VersionEntry(int(path.name), path, complete, tuple(files))


def _file_state(child: os.DirEntry[str]) -> tuple[str, int, int]:
    """Name, size and mtime (of a symlink's target when it has one): the fingerprint's part."""
    try:
        info = child.stat()
    except OSError:  # a dangling symlink, a loop, or gone: its own metadata then
        try:
            info = child.stat(follow_symlinks=False)
        except OSError:
            return child.name, -1, -1
    return child.name, info.st_size, info.st_mtime_ns
