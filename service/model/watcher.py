"""Which model is served: the repository's best version, else the embedded default.

`ModelSource.refresh` (blocking, run in a worker thread) decides; `Watcher` polls it from an
asyncio task and publishes the result by assigning one immutable `Snapshot` to the holder,
so a request that took the snapshot sees one runtime from start to finish.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from service.model.memory import release_freed_memory
from service.model.repository import ModelRepository, Rejection, VersionEntry, VersionRecord
from service.model.runtime import ModelRuntime
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """The served runtime (or None) and the report behind the choice."""

    runtime: ModelRuntime | None
    detail: str
    versions: tuple[VersionRecord, ...] = ()

    @property
    def version_label(self) -> str:
        """The X-Model-Version value."""
        return "none" if self.runtime is None else str(self.runtime.version)


NOT_LOADED = Snapshot(None, "the model repository has not been scanned yet")


@dataclass
class ModelHolder:
    """The one mutable cell: replaced by a single assignment, read without a lock."""

    snapshot: Snapshot = NOT_LOADED


@dataclass(frozen=True)
class RefreshResult:
    snapshot: Snapshot
    loaded: ModelRuntime | None  # set when this refresh swapped in a new runtime
    rejections: list[Rejection] = field(default_factory=list)


class ModelSource:
    """The configured repository and the embedded fallback; refreshed from one thread."""

    def __init__(self, settings: Settings) -> None:
        threads = settings.ort_intra_op_threads
        root = settings.model_repository
        self.repository = None if root is None else ModelRepository(root, "repository", threads)
        self.embedded = (
            ModelRepository(settings.embedded_model_dir, "embedded", threads)
            if settings.fallback_to_embedded
            else None
        )

    def refresh(self, current: Snapshot) -> RefreshResult:
        """Swap to a newer valid repository version, or to the embedded model if none serves."""
        runtime = current.runtime
        repo_entries = self.repository.scan() if self.repository else []
        embedded_entries = self.embedded.scan() if self.embedded else []
        rejections: list[Rejection] = []
        loaded = None
        if self.repository is not None:
            # Versions count from 0 (the embedded default model is 0): -1 means "any".
            above = runtime.version if runtime and runtime.source == "repository" else -1
            loaded, rejected = self.repository.load_best(repo_entries, above)
            rejections += rejected
        if loaded is None and runtime is None and self.embedded is not None:
            loaded, rejected = self.embedded.load_best(embedded_entries, -1)
            rejections += rejected
        serving = loaded or runtime
        snapshot = Snapshot(
            serving,
            self._detail(serving, repo_entries, embedded_entries),
            self._records(serving, repo_entries, embedded_entries),
        )
        return RefreshResult(snapshot, loaded, rejections)

    def _records(
        self,
        serving: ModelRuntime | None,
        repo_entries: list[VersionEntry],
        embedded_entries: list[VersionEntry],
    ) -> tuple[VersionRecord, ...]:
        records: list[VersionRecord] = []
        for repo, entries in ((self.repository, repo_entries), (self.embedded, embedded_entries)):
            if repo is not None:
                version = serving.version if serving and serving.source == repo.source else None
                records += repo.records(entries, version)
        if serving and not any(r.status == "serving" for r in records):
            records.append(VersionRecord(serving.version, serving.source, "serving"))
        return tuple(records)

    def _detail(
        self,
        serving: ModelRuntime | None,
        repo_entries: list[VersionEntry],
        embedded_entries: list[VersionEntry],
    ) -> str:
        why_repo = _why_none(
            self.repository, repo_entries, "the model repository", "is not configured"
        )
        if serving is None:
            why_embedded = _why_none(
                self.embedded,
                embedded_entries,
                "the embedded default model",
                "is disabled (VAE_FALLBACK_TO_EMBEDDED=false)",
            )
            return f"no valid model: {why_repo}; {why_embedded}"
        if serving.source == "repository":
            return f"serving version {serving.version} from the model repository"
        return f"serving the embedded default model (version {serving.version}): {why_repo}"


def _why_none(
    repo: ModelRepository | None, entries: list[VersionEntry], name: str, absent: str
) -> str:
    """Why `repo` offers nothing to serve, in words."""
    if repo is None:
        return f"{name} {absent}"
    complete = [e for e in entries if e.complete]
    if not complete:
        return f"{name} has no complete version (a version is complete once its manifest exists)"
    if all(repo.rejection(e) is not None for e in complete):
        return f"every version of {name} was rejected (see versions for the reasons)"
    return f"{name} has versions that have not been validated yet"


class Watcher:
    """Polls the model source every `interval` seconds and swaps the holder's snapshot."""

    def __init__(
        self,
        settings: Settings,
        holder: ModelHolder,
        on_refresh: Callable[[RefreshResult], None] = lambda result: None,
    ) -> None:
        self.source = ModelSource(settings)
        self.holder = holder
        self.on_refresh = on_refresh  # told of every refresh (the metrics count them)
        self.interval = settings.poll_interval_s
        self.model_freed = False  # a swapped-out runtime was garbage-collected since last poll

    async def refresh(self) -> None:
        """One scan and (maybe) swap; loading and validation run in a worker thread."""
        previous = self.holder.snapshot.runtime
        if self.model_freed:
            self.model_freed = False
            await anyio.to_thread.run_sync(release_freed_memory)
        result = await anyio.to_thread.run_sync(self.source.refresh, self.holder.snapshot)
        self.holder.snapshot = result.snapshot
        self.on_refresh(result)
        if result.loaded is not None:
            log.info("now %s", result.snapshot.detail)
            if previous is not None:
                # Requests that took the old snapshot may still use it; once the last one ends,
                # the next poll gives its freed memory back (service.memory).
                weakref.finalize(previous, self._mark_model_freed)

    def _mark_model_freed(self) -> None:
        self.model_freed = True

    async def run(self) -> None:
        """Poll until cancelled; a failed poll is logged and the current model keeps serving."""
        while True:
            await anyio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception:
                label = self.holder.snapshot.version_label
                log.exception("polling the model repository failed; still serving %s", label)
