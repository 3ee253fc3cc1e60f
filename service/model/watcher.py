"""Which model is served: the repository's best version, else the embedded default.

`ModelSource.refresh` (blocking, run in a worker thread) decides; `Watcher` polls it from an
asyncio task and publishes the result by assigning one immutable `Snapshot` to the holder,
so a request that took the snapshot sees one runtime from start to finish.

A served runtime that gives a non-finite output reports it from whichever thread ran it. The
report is handed to the event loop (`call_soon_threadsafe`) and wakes the poll at once, which
withdraws the version and picks the best one left. So the holder has one writer, the poll
task, on one thread: a withdrawal made under a lock from the inference thread could be undone
by a refresh already running, which would then assign a snapshot still holding the broken
runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio

from service.model.memory import release_freed_memory
from service.model.repository import (
    ModelRepository,
    Rejection,
    VersionEntry,
    VersionRecord,
    Withdrawal,
)
from service.model.runtime import ModelRuntime, Source
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
    withdrawn: list[Rejection] = field(default_factory=list)  # served versions found broken


class ModelSource:
    """The configured repository and the embedded fallback; refreshed from one thread."""

    def __init__(
        self, settings: Settings, on_broken: Callable[[Withdrawal], None] | None = None
    ) -> None:
        threads = settings.ort_intra_op_threads
        root = settings.model_repository
        self.repository = (
            None if root is None else ModelRepository(root, "repository", threads, on_broken)
        )
        self.embedded = (
            ModelRepository(settings.embedded_model_dir, "embedded", threads, on_broken)
            if settings.fallback_to_embedded
            else None
        )

    def refresh(self, current: Snapshot, withdrawals: Sequence[Withdrawal] = ()) -> RefreshResult:
        """Withdraw versions found broken; swap to a newer valid repository version, or to the
        best one left when the served one was withdrawn, or to the embedded model if none."""
        withdrawn = self._withdraw(withdrawals)
        runtime = current.runtime
        if runtime is not None and any(
            (w.source, w.version) == (runtime.source, runtime.version) for w in withdrawn
        ):
            runtime = None  # choose again from every version, as at start-up
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
        return RefreshResult(snapshot, loaded, rejections, withdrawn)

    def _withdraw(self, withdrawals: Sequence[Withdrawal]) -> list[Rejection]:
        withdrawn = []
        for withdrawal in withdrawals:
            repo = self._repository(withdrawal.source)
            rejection = None if repo is None else repo.withdraw(withdrawal)
            if rejection is not None:
                withdrawn.append(rejection)
        return withdrawn

    def _repository(self, source: Source) -> ModelRepository | None:
        return self.repository if source == "repository" else self.embedded

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
    """Polls the model source every `interval` seconds (and at once when a served model is
    found broken) and swaps the holder's snapshot."""

    def __init__(
        self,
        settings: Settings,
        holder: ModelHolder,
        on_refresh: Callable[[RefreshResult], None] = lambda result: None,
    ) -> None:
        self.source = ModelSource(settings, on_broken=self.report)
        self.holder = holder
        self.on_refresh = on_refresh  # told of every refresh (the metrics count them)
        self.interval = settings.poll_interval_s
        self.model_freed = False  # a swapped-out runtime was garbage-collected since last poll
        # Touched on the event loop only: reports arrive through call_soon_threadsafe.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._withdrawals: list[Withdrawal] = []
        self._wake = asyncio.Event()
        self._last_failure: str | None = None

    def report(self, withdrawal: Withdrawal) -> None:
        """A served runtime gave a non-finite output; called from the thread that ran it."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
                loop.call_soon_threadsafe(self._withdraw_soon, withdrawal)

    def _withdraw_soon(self, withdrawal: Withdrawal) -> None:
        self._withdrawals.append(withdrawal)
        self._wake.set()

    async def refresh(self) -> None:
        """One scan and (maybe) swap; loading and validation run in a worker thread.

        Never raises (but when cancelled): a failed poll is logged, once while it fails the
        same way, and the current model keeps serving.
        """
        self._loop = asyncio.get_running_loop()
        previous = self.holder.snapshot.runtime
        withdrawals, self._withdrawals = self._withdrawals, []
        try:
            if self.model_freed:
                self.model_freed = False
                await anyio.to_thread.run_sync(release_freed_memory)
            result = await anyio.to_thread.run_sync(
                self.source.refresh, self.holder.snapshot, withdrawals
            )
        except Exception as exc:
            self._withdrawals[:0] = withdrawals  # tried again at the next poll
            self._poll_failed(exc)
            return
        self._last_failure = None
        self.holder.snapshot = result.snapshot
        self.on_refresh(result)
        if result.loaded is not None or result.withdrawn:
            log.info("now %s", result.snapshot.detail)
        if result.loaded is not None and previous is not None:
            # Requests that took the old snapshot may still use it; once the last one ends,
            # the next poll gives its freed memory back (service.memory).
            weakref.finalize(previous, self._mark_model_freed)

    def _poll_failed(self, exc: Exception) -> None:
        snapshot = self.holder.snapshot
        failure = f"{type(exc).__name__}: {exc}"
        if failure != self._last_failure:
            label = snapshot.version_label
            log.error("polling the model repository failed; still serving %s", label, exc_info=exc)
        self._last_failure = failure
        if snapshot.runtime is None:
            detail = f"reading the model repositories failed ({type(exc).__name__}); retrying"
            self.holder.snapshot = dataclasses.replace(snapshot, detail=detail)

    def _mark_model_freed(self) -> None:
        self.model_freed = True

    async def run(self) -> None:
        """Poll until cancelled: every interval, or at once when a withdrawal is reported."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            await self.refresh()
