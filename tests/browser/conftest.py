"""Fixtures: the real service under uvicorn on a loopback port, and Debian's Chromium.

Chromium is Debian's (`apt-get install chromium`, see .ci/setup-browser.sh), driven by the
Playwright Python package; Playwright's own browser download is never used. Every page records
the requests it makes; any request aimed off 127.0.0.1 is aborted and fails the test.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from service.settings import Settings
from tests.browser.browser_helpers import (
    BROWSER_ARGS,
    DESKTOP,
    SERVED_VERSION,
    Visit,
    embedded_version_dir,
    is_local,
    missing,
    serve,
)
from tests.service.service_helpers import install

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Route

_QUIET: dict[str, Any] = {"poll_interval_s": 0.5, "log_level": "warning"}


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium, one for the browser tests.

    Package-scoped, not session-scoped: Playwright's sync API keeps an asyncio loop running
    in the main thread while it is open, and later tests' asyncio.run() would refuse to run.
    """
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        missing("the playwright package")
    # A shared 2-core machine can stall a request for seconds; 5 s (the default) flaked.
    expect.set_options(timeout=20_000)
    executable = shutil.which("chromium")
    if executable is None:
        missing("chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="package")
def served_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real default model, republished as version SERVED_VERSION of a model repository;
    returns its manifest.json."""
    root = tmp_path_factory.mktemp("repository")
    (root / "vae").mkdir()
    return install(root, embedded_version_dir(), SERVED_VERSION) / "manifest.json"


@pytest.fixture(scope="package")
def live_url(served_manifest: Path) -> Iterator[str]:
    """The service with the real page, serving that repository (and no embedded fallback)."""
    root = served_manifest.parents[2]
    yield from serve(Settings(model_repository=root, fallback_to_embedded=False, **_QUIET))


@pytest.fixture(scope="package")
def default_url() -> Iterator[str]:
    """The service as `vae-serve` starts by default: the embedded default model."""
    yield from serve(Settings(model_repository=None, **_QUIET))


@pytest.fixture
def empty_url(tmp_path: Path) -> Iterator[str]:
    """The service with the real page and no model ready: model operations answer 503."""
    (tmp_path / "repo" / "vae").mkdir(parents=True)
    yield from serve(
        Settings(model_repository=tmp_path / "repo", fallback_to_embedded=False, **_QUIET)
    )


@pytest.fixture
def visit(browser: Browser) -> Iterator[Callable[..., Visit]]:
    """Open pages; afterwards, assert that none requested anything off 127.0.0.1 or threw."""
    opened: list[Visit] = []

    def open_page(viewport: dict[str, int] = DESKTOP) -> Visit:
        context = browser.new_context(viewport=viewport, service_workers="block")
        visit = Visit(context.new_page())
        context.on("request", lambda request: visit.requests.append(request.url))
        visit.page.on("pageerror", lambda error: visit.errors.append(str(error)))

        def guard(route: Route) -> None:
            if is_local(route.request.url):
                route.continue_()
            else:
                visit.blocked.append(route.request.url)
                route.abort()

        context.route("**/*", guard)
        opened.append(visit)
        return visit

    yield open_page
    for visit in opened:
        visit.page.context.close()
        assert not visit.errors, f"the page threw: {visit.errors}"
        assert not visit.blocked, f"requests aimed off 127.0.0.1: {visit.blocked}"
        assert all(is_local(url) for url in visit.requests), visit.requests
