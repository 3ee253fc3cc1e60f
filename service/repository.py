"""One model repository root (`<root>/vae/<version>/`): scan it and validate its versions.

A version is validated at most once per content: a rejection is remembered with a fingerprint
of the files (names, sizes, mtimes), so a version that is fixed in place is tried again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from service.loader import ModelLoadError, load_runtime
from service.manifest import MANIFEST_FILE, ManifestError, read_manifest
from service.runtime import ModelRuntime, NonFiniteOutputError, Source

MODEL_NAME = "vae"
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
            children = list(os.scandir(self.root / MODEL_NAME))
        except OSError:
            return []
        entries = [
            _entry(Path(child.path))
            for child in children
            if child.name.isascii() and child.name.isdigit() and child.is_dir()
        ]
        return sorted(entries, key=lambda e: e.version, reverse=True)

    def load_best(
        self, entries: list[VersionEntry], above: int
    ) -> tuple[ModelRuntime | None, list[Rejection]]:
        """Load the highest complete version > `above` that validates; report new rejections."""
        rejections: list[Rejection] = []
        for entry in entries:
            if entry.version <= above:
                break
            if not entry.complete or self.rejection(entry) is not None:
                continue
            try:
                return self._load(entry), rejections
            except (ManifestError, ModelLoadError) as exc:
                rejections.append(self._reject(entry, str(exc)))
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

    def _reject(self, entry: VersionEntry, reason: str) -> Rejection:
        self._rejected[entry.version] = (entry.fingerprint, reason)
        log.warning(
            "rejected %s version %d at %s: %s", self.source, entry.version, entry.path, reason
        )
        return Rejection(entry.version, self.source, reason)


def _entry(path: Path) -> VersionEntry:
    try:
        with os.scandir(path) as children:  # closed even when a file vanishes mid-listing
            files = sorted(
                (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in children if f.is_file()
            )
    except OSError:  # removed or changing while listed: incomplete until the next poll
        files = []
    complete = any(name == MANIFEST_FILE for name, _, _ in files)
    return VersionEntry(int(path.name), path, complete, tuple(files))
